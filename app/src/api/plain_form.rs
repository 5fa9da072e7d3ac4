//! Forms posted without JavaScript. Such a post is answered with a redirect and the form's page
//! is loaded anew, so what the page would have shown from the action's answer travels in the
//! address instead:
//! - after a success, `?done=<what>`, which the page confirms in words;
//! - after a refusal, the error (`__path`, `__err`, as server_fn writes it) and what was typed
//!   (`kept.<field>`), which the form shows again instead of making the user type it twice;
//! - either way, `#<id>` of the section around the form, where its message shows: the browser
//!   scrolls there instead of to the top of a long page, out of sight of the answer.
//!
//! Only plain text fields are kept: passwords and secrets never go in an address.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// The query parameter that says which form's post succeeded.
pub const DONE: &str = "done";
/// The one-time token of a key created without JavaScript, for the list it returns to
/// (`keys::secret_handoff`).
pub const CREATED: &str = "created";
/// The same for a key rolled without JavaScript, on the key's page.
pub const ROLLED: &str = "rolled";
const KEPT: &str = "kept.";
/// Longer values are not kept (the longest field, a reason, takes 2,000 characters).
#[cfg(feature = "ssr")]
const KEPT_MAX_BYTES: usize = 8 * 1024;

/// Whether the page was loaded after a plain form post that did `what`.
pub fn done(what: &'static str) -> Memo<bool> {
    let query = use_query_map();
    Memo::new(move |_| query.read().get(DONE).as_deref() == Some(what))
}

/// What the user typed into `field` of the form of server function `S`, when that form was
/// posted without JavaScript and refused.
pub fn kept<S: server_fn::ServerFn>(field: &'static str) -> Memo<Option<String>> {
    let query = use_query_map();
    Memo::new(move |_| {
        let query = query.read();
        (query.get("__path").as_deref() == Some(S::PATH)).then(|| query.get(&format!("{KEPT}{field}"))).flatten()
    })
}

/// Whether this server function call is a plain form post (no JavaScript), told apart as
/// server_fn does it: the browser's navigation accepts `text/html`, the app's fetches do not.
/// Such a post is answered with a redirect. Call it before the function's first `.await`.
#[cfg(feature = "ssr")]
pub fn is_plain_form_post() -> bool {
    use_context::<axum::http::request::Parts>().is_some_and(|parts| {
        parts
            .headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
    })
}

/// [`kept`] as a `<textarea>`'s `inner_html`. Leptos writes a textarea's text into the page
/// unescaped (tachys marks the element as not escaping its children), so a kept value of
/// `</textarea><script>` would run: it is escaped here, and the textarea shows it as typed.
pub fn kept_in_textarea<S: server_fn::ServerFn>(field: &'static str) -> Signal<String> {
    let kept = kept::<S>(field);
    Signal::derive(move || kept.with(|v| v.as_deref().map(format::html_escape).unwrap_or_default()))
}

/// Where on its page a form's answer shows (element ids): after a success, and after a
/// refusal. Most forms show both in one section (a `&str` converts).
#[derive(Clone, Copy)]
pub struct Sections<'a> {
    pub done: &'a str,
    pub refused: &'a str,
}

impl<'a> From<&'a str> for Sections<'a> {
    fn from(at: &'a str) -> Self {
        Self { done: at, refused: at }
    }
}

/// A post of a form without JavaScript, and the page it came from.
#[cfg(feature = "ssr")]
pub struct PlainForm {
    /// The form's page, without what earlier posts added to its address. Only its path and
    /// query are used: the answer never leads off this site, whatever the `Referer` said.
    page: url::Url,
}

#[cfg(feature = "ssr")]
impl PlainForm {
    /// This request's form, if it was posted without JavaScript from a page that said where it
    /// is. Read it before the server function's first `.await`.
    pub(crate) fn of_request() -> Option<Self> {
        if !is_plain_form_post() {
            return None;
        }
        let parts = use_context::<axum::http::request::Parts>()?;
        let referer = parts.headers.get(axum::http::header::REFERER)?.to_str().ok()?;
        Some(Self { page: form_page(referer)? })
    }

    /// Back to the form's section `at` on its page, saying `what` was done.
    fn confirm(&self, what: &str, at: &str) {
        let mut page = self.page.clone();
        page.query_pairs_mut().append_pair(DONE, what);
        page.set_fragment(Some(at));
        redirect(&page);
    }

    /// Back to the form's section `at` on its page with server function `S`'s error and the
    /// values typed into the form (field name, value), for the form to show again.
    fn refuse<S: server_fn::ServerFn>(&self, err: &crate::error::AppError, typed: &[(&str, &str)], at: &str) {
        redirect(&self.refused::<S>(err, typed, at));
    }

    fn refused<S: server_fn::ServerFn>(
        &self,
        err: &crate::error::AppError,
        typed: &[(&str, &str)],
        at: &str,
    ) -> url::Url {
        let mut page = self.page.clone();
        page.set_fragment(Some(at));
        // A value longer than any field takes was not typed into the form: not worth an address
        // too long for a proxy.
        let keepable = typed.iter().filter(|(_, value)| value.len() <= KEPT_MAX_BYTES);
        page.query_pairs_mut().extend_pairs(keepable.map(|(field, value)| (format!("{KEPT}{field}"), value)));
        // The error as server_fn puts it in the address, for the page's action to read.
        server_fn::error::ServerFnUrlError::new(S::PATH, err.clone()).to_url(page.as_str()).unwrap_or(page)
    }
}

/// Runs the body of server function `S` and answers a plain form post of it: after a success,
/// back to the form's page confirming `done` (`None`: the body leads elsewhere itself); after a
/// refusal, back to the form with its error and what was typed (field name, value). Either way
/// to the section of `at` that shows that answer (the form's own, for most). Calls made by the
/// app's script get the body's result alone. Await it first in the server function (the
/// request is read when it starts).
#[cfg(feature = "ssr")]
pub async fn answer<'a, S: server_fn::ServerFn, T>(
    done: Option<&str>,
    at: impl Into<Sections<'a>>,
    typed: &[(&str, &str)],
    body: impl std::future::Future<Output = Result<T, crate::error::AppError>>,
) -> Result<T, crate::error::AppError> {
    let form = PlainForm::of_request();
    let at = at.into();
    let result = body.await;
    match (form, &result) {
        (Some(form), Ok(_)) => done.into_iter().for_each(|what| form.confirm(what, at.done)),
        (Some(form), Err(e)) => form.refuse::<S>(e, typed, at.refused),
        (None, _) => {}
    }
    result
}

/// The form's page named by a post's `Referer`, without what earlier posts added to its address.
#[cfg(feature = "ssr")]
fn form_page(referer: &str) -> Option<url::Url> {
    let mut page = url::Url::parse(referer).ok()?;
    // Including a spent secret's token: read twice, it only says the secret was shown.
    let earlier = |key: &str| [DONE, CREATED, ROLLED, "__path", "__err"].contains(&key) || key.starts_with(KEPT);
    let left: Vec<(String, String)> =
        page.query_pairs().filter(|(k, _)| !earlier(k)).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    page.set_query(None);
    if !left.is_empty() {
        page.query_pairs_mut().extend_pairs(left);
    }
    page.set_fragment(None);
    Some(page)
}

/// Where an answer leads: the page's path, query and section on this site, and only a local
/// path (the `Referer` of a post from elsewhere could say `//elsewhere`).
#[cfg(feature = "ssr")]
fn location(page: &url::Url) -> String {
    let query = page.query().map(|q| format!("?{q}")).unwrap_or_default();
    let section = page.fragment().map(|f| format!("#{f}")).unwrap_or_default();
    super::safe_next(Some(&format!("{}{query}{section}", page.path()))).to_owned()
}

#[cfg(feature = "ssr")]
fn redirect(page: &url::Url) {
    leptos_axum::redirect(&location(page));
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    use super::*;

    #[test]
    fn an_answer_returns_to_the_form_page_without_earlier_answers() {
        let page = |referer| form_page(referer).map(|p| location(&p));
        let key = "http://127.0.0.1:3000/dashboard/developers/api-keys/0b5c";
        assert_eq!(page(key).as_deref(), Some("/dashboard/developers/api-keys/0b5c"));
        // An earlier confirmation, error or kept value goes; the page's own query stays.
        let earlier =
            format!("{key}?rolled=t0k&done=renamed&page=2&__path=%2Frpc%2Fkeys%2Frename&__err=eyJ9&kept.name=a+b#x");
        assert_eq!(page(&earlier).as_deref(), Some("/dashboard/developers/api-keys/0b5c?page=2"));
        // Never off this site, whatever the Referer said.
        assert_eq!(page("https://elsewhere.example//evil.example/x").as_deref(), Some(super::super::HOME_PATH));
        assert_eq!(page("https://elsewhere.example/somewhere").as_deref(), Some("/somewhere"));
        assert_eq!(page("not a url"), None);
    }

    #[test]
    fn a_refusal_keeps_what_was_typed_and_the_error() {
        use crate::api::RequestQuotaIncrease;
        use crate::error::AppError;
        let form = PlainForm { page: form_page("http://h/dashboard/x?done=quota_requested&__err=old").unwrap() };
        let err = AppError::BadRequest { message: "Too many.".into(), field: Some("per_hour".into()) };
        let at = form.refused::<RequestQuotaIncrease>(
            &err,
            &[("per_hour", "9x"), ("reason", "spikes & sales, 50%")],
            "quota-requests",
        );
        let pairs: Vec<(String, String)> = at.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let get = |key: &str| pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(at.path(), "/dashboard/x");
        assert_eq!(get("kept.per_hour"), ["9x"]);
        assert_eq!(get("kept.reason"), ["spikes & sales, 50%"]);
        assert_eq!(get("__path"), [<RequestQuotaIncrease as server_fn::ServerFn>::PATH]);
        assert!(get("done").is_empty(), "{at}");
        // Back at the form's section, not at the top of a long page.
        assert_eq!(at.fragment(), Some("quota-requests"));
        assert!(location(&at).ends_with("#quota-requests"), "{}", location(&at));
        // A value no field takes is not kept.
        let long = "x".repeat(KEPT_MAX_BYTES + 1);
        let at = form.refused::<RequestQuotaIncrease>(&err, &[("reason", &long)], "quota-requests");
        assert!(!at.as_str().contains("kept.reason") && at.as_str().contains("__err="), "{at}");
        // The page's action reads the error back from the address.
        let [encoded] = get("__err")[..] else { panic!("one error: {at}") };
        assert_eq!(server_fn::error::ServerFnUrlError::<AppError>::decode_err(encoded), err);
    }
}
