//! A form's error message, tied to the field it is about (`AppError::field`): that field is
//! marked `aria-invalid` and described by the message (`aria-describedby`), so a screen reader
//! names the problem on the field itself; the message is announced when it appears
//! (`role=alert`). Errors about no one field (a revoked key, a lost connection) only show.
//! Once the user edits the field an error is about, the error goes until the next answer: it
//! would otherwise stay beside a corrected value while the browser's own checks hold the form.

use leptos::prelude::*;

use crate::error::AppError;

#[derive(Clone, Copy)]
pub struct FormError {
    error: Signal<Option<AppError>>,
    /// The field the error is about was edited since the answer that brought it.
    edited: RwSignal<bool>,
    /// The message's element id, unique on the page.
    id: StoredValue<String>,
}

impl FormError {
    pub fn new(id: impl Into<String>, error: impl Fn() -> Option<AppError> + Send + Sync + 'static) -> Self {
        let error = Signal::derive(error);
        let edited = RwSignal::new(false);
        // Every answer shows again, even one with the same error as before.
        Effect::new(move |_| {
            error.track();
            edited.set(false);
        });
        Self { error, edited, id: StoredValue::new(id.into()) }
    }

    /// The error, unless the user has edited the field it is about since.
    fn shown(&self) -> Option<AppError> {
        if self.edited.get() {
            return None;
        }
        self.error.get()
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
        self.shown().as_ref().and_then(AppError::field) == Some(field)
    }

    /// The attributes of the input named `field`: `aria-invalid`, and `aria-describedby` naming
    /// the message, while the error is about that input. Spread onto it: `<input {..e.on("name")}/>`.
    pub fn on(&self, field: &'static str) -> impl leptos::attr::Attribute {
        let this = *self;
        view! {
            <{..}
                aria-invalid=move || this.is_about(field).then_some("true")
                aria-describedby=move || this.is_about(field).then(|| this.id.get_value())
                on:input=move |_| {
                    if this.is_about(field) {
                        this.edited.set(true);
                    }
                }
            />
        }
    }

    /// An `on:input` handler for fields that are checked together (an hourly and a daily limit:
    /// "ask for a higher hourly or daily limit" names one of them): editing any of them hides an
    /// error about any of them. Put it on an element around the fields.
    pub fn edited_in<E>(&self, fields: &'static [&'static str]) -> impl Fn(E) + Copy + 'static {
        let this = *self;
        move |_| {
            if fields.iter().any(|field| this.is_about(field)) {
                this.edited.set(true);
            }
        }
    }

    /// The message, where the form shows it.
    pub fn message(&self, testid: &'static str) -> impl IntoView {
        let this = *self;
        let id = self.id;
        move || {
            this.shown().map(
                |e| view! { <p class="error" role="alert" id=id.get_value() data-testid=testid>{e.to_string()}</p> },
            )
        }
    }
}
