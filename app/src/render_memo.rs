//! A page's data, fetched once per server rendering.
//!
//! While rendering a page on the server, Leptos may create its components, and so its resources,
//! more than once: a `Suspense` re-runs its children to find resources read behind other
//! resources (`dry_resolve`), and the dashboard layout's `Suspend` builds the page behind the
//! signed-in user. Measured on the key list: 3 to 4 renderings in 40 created the page twice, once
//! three times. Each creation fetched its own data: queries ran twice, a one-time read (a new
//! key's secret) was used up by the copy that was thrown away, and the browser could hydrate the
//! HTML of one copy with the data of another, taken moments apart. With every page resource
//! fetched through `once_per_render`, all copies within one rendering share one fetch.
//!
//! Server functions called from the browser are not affected: the memo lives only in the
//! context of a server-rendered page (`provide`, from the shell).

use std::fmt::Debug;
use std::future::Future;

/// The memo of one rendering: a fetch per resource name and arguments.
#[cfg(feature = "ssr")]
#[derive(Clone, Default)]
struct RenderMemo(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Fetched>>>);

#[cfg(feature = "ssr")]
type Fetched = std::sync::Arc<tokio::sync::OnceCell<std::sync::Arc<dyn std::any::Any + Send + Sync>>>;

/// Starts the memo of a page being rendered on the server.
#[cfg(feature = "ssr")]
pub fn provide() {
    leptos::prelude::provide_context(RenderMemo::default());
}

/// `fetch`'s result for the resource `name` with `args`: on the server, the first fetch of this
/// rendering (later copies wait for it); in the browser, `fetch` itself. Call it in a resource's
/// fetcher, not inside its future: the rendering's context is only there synchronously.
#[cfg(feature = "ssr")]
pub fn once_per_render<T, Fut>(name: &'static str, args: &impl Debug, fetch: Fut) -> impl Future<Output = T>
where
    T: Clone + Send + Sync + 'static,
    Fut: Future<Output = T>,
{
    // The type is part of the key, so a value found under it is always a `T`.
    let key = format!("{name} {args:?} {}", std::any::type_name::<T>());
    let cell = leptos::prelude::use_context::<RenderMemo>().map(|memo| {
        let mut fetched = memo.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        fetched.entry(key).or_default().clone()
    });
    async move {
        let Some(cell) = cell else { return fetch.await };
        let value = cell.get_or_init(|| async { std::sync::Arc::new(fetch.await) as _ }).await;
        match value.downcast_ref::<T>() {
            Some(value) => value.clone(),
            None => unreachable!("render memo keys name their type"),
        }
    }
}

#[cfg(not(feature = "ssr"))]
pub fn once_per_render<T, Fut>(_name: &'static str, _args: &impl Debug, fetch: Fut) -> Fut
where
    Fut: Future<Output = T>,
{
    fetch
}
