//! Free text people type (key names, reasons, notes). Form decoding turns bytes that are not
//! UTF-8 (`%FF`) into U+FFFD instead of failing, so such input would be stored as "��" and shown
//! to others; control characters (other than line breaks and tabs) would reach emails, CSV
//! files and pages. Both are refused where the text is checked.

use crate::{ServiceError, ServiceResult};

/// Refuses `text` if it came from bytes that were not text, or holds control characters other
/// than line breaks and tabs; `what` names it for the message.
pub fn check_typed(what: &str, text: &str) -> ServiceResult<()> {
    if text.contains(char::REPLACEMENT_CHARACTER) {
        return Err(ServiceError::invalid(format!("{what} contains bytes that are not text (UTF-8).")));
    }
    if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ServiceError::invalid(format!("{what} cannot contain control characters.")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_and_control_characters_are_refused_and_other_text_passes() {
        assert!(check_typed("The note", "caf\u{e9} \u{1f600} 1,000/h\r\nsecond line\twith a tab").is_ok());
        let err = check_typed("The note", "\u{fffd}\u{fffd}").unwrap_err();
        assert!(err.to_string().contains("The note contains bytes that are not text"), "{err}");
        for bad in ["a\u{1}b", "bell\u{7}", "esc\u{1b}[31m", "nul\u{0}", "c1\u{85}"] {
            let err = check_typed("The note", bad).unwrap_err();
            assert!(err.to_string().contains("control characters"), "{bad:?}: {err}");
        }
    }
}
