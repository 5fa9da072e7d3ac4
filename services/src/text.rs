//! Free text people type (key names, reasons, notes). Form decoding turns bytes that are not
//! UTF-8 (`%FF`) into U+FFFD instead of failing, so such input would be stored as "��" and shown
//! to others; it is refused where the text is checked.

use crate::{ServiceError, ServiceResult};

/// Refuses `text` if it came from bytes that were not text; `what` names it for the message.
pub fn check_decodable(what: &str, text: &str) -> ServiceResult<()> {
    if text.contains(char::REPLACEMENT_CHARACTER) {
        return Err(ServiceError::invalid(format!("{what} contains bytes that are not text (UTF-8).")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_characters_are_refused_and_other_text_passes() {
        assert!(check_decodable("The note", "caf\u{e9} \u{1f600} 1,000/h").is_ok());
        let err = check_decodable("The note", "\u{fffd}\u{fffd}").unwrap_err();
        assert!(err.to_string().contains("The note contains bytes that are not text"), "{err}");
    }
}
