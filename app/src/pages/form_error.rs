//! A form's error message, tied to the field it is about (`AppError::field`): that field is
//! marked `aria-invalid` and described by the message (`aria-describedby`), so a screen reader
//! names the problem on the field itself; the message is announced when it appears
//! (`role=alert`). Errors about no one field (a revoked key, a lost connection) only show.

use leptos::prelude::*;

use crate::error::AppError;

#[derive(Clone, Copy)]
pub struct FormError {
    error: Signal<Option<AppError>>,
    /// The message's element id, unique on the page.
    id: StoredValue<String>,
}

impl FormError {
    pub fn new(id: impl Into<String>, error: impl Fn() -> Option<AppError> + Send + Sync + 'static) -> Self {
        Self { error: Signal::derive(error), id: StoredValue::new(id.into()) }
    }

    /// The error of an action's last answer.
    pub fn of<I, O>(id: impl Into<String>, action: ServerAction<I>) -> Self
    where
        I: leptos::server_fn::ServerFn<Output = O, Error = AppError> + Clone + Send + Sync + 'static,
        O: Clone + Send + Sync + 'static,
    {
        Self::new(id, move || action.value().get().and_then(Result::err))
    }

    fn is_about(&self, field: &str) -> bool {
        self.error.with(|e| e.as_ref().and_then(AppError::field) == Some(field))
    }

    /// The attributes of the input named `field`: `aria-invalid`, and `aria-describedby` naming
    /// the message, while the error is about that input. Spread onto it: `<input {..e.on("name")}/>`.
    pub fn on(&self, field: &'static str) -> impl leptos::attr::Attribute {
        let this = *self;
        view! {
            <{..}
                aria-invalid=move || this.is_about(field).then_some("true")
                aria-describedby=move || this.is_about(field).then(|| this.id.get_value())
            />
        }
    }

    /// The message, where the form shows it.
    pub fn message(&self, testid: &'static str) -> impl IntoView {
        let (error, id) = (self.error, self.id);
        move || {
            error.get().map(
                |e| view! { <p class="error" role="alert" id=id.get_value() data-testid=testid>{e.to_string()}</p> },
            )
        }
    }
}
