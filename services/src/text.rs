//! Free text people type (key names, reasons, notes). Form decoding turns bytes that are not
//! UTF-8 (`%FF`) into U+FFFD instead of failing, so such input would be stored as "��" and shown
//! to others; control characters (other than line breaks and tabs) would reach emails, CSV
//! files and pages; and invisible characters that reorder or hide text (a key named
//! "invoice\u{202e}fdp.exe" shows as "invoiceexe.pdf") would let one thing pass for another
//! in admins' pages and mail. All are refused where the text is checked.

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
    if text.chars().any(hides_or_reorders) {
        return Err(ServiceError::invalid(format!(
            "{what} cannot contain invisible characters that hide text or change its direction."
        )));
    }
    Ok(())
}

/// Bidi embeddings, overrides and isolates (they reorder the text shown after them), zero-width
/// spaces and the byte-order mark. Joiners and direction marks stay: scripts and emoji need them.
fn hides_or_reorders(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}' | '\u{feff}')
}

/// The longest reason or note, in characters.
pub const NOTE_MAX_CHARS: usize = 2000;

/// A reason or note as typed: trimmed, at most [`NOTE_MAX_CHARS`], text only (see
/// [`check_typed`]). Whether it may be empty is the caller's rule (each says why it needs one).
pub fn check_note<'a>(what: &str, raw: &'a str) -> ServiceResult<&'a str> {
    let note = raw.trim();
    if note.chars().count() > NOTE_MAX_CHARS {
        return Err(ServiceError::invalid(format!("{what} can have at most {NOTE_MAX_CHARS} characters.")));
    }
    check_typed(what, note)?;
    Ok(note)
}

/// An `ILIKE` pattern matching text that contains `typed` as typed: `%`, `_` and `\` are not
/// wildcards.
pub fn contains_pattern(typed: &str) -> String {
    let escaped = typed.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
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
        for bad in ["invoice\u{202e}fdp.exe", "x\u{200b}y", "\u{2067}abc\u{2069}", "\u{feff}bom"] {
            let err = check_typed("The name", bad).unwrap_err();
            assert!(err.to_string().contains("invisible characters"), "{bad:?}: {err}");
        }
        // Joiners (emoji, Indic scripts) and direction marks (Arabic, Hebrew) are text.
        assert!(check_typed(
            "The name",
            "\u{1f468}\u{200d}\u{1f4bb} \u{5e9}\u{5dc}\u{5d5}\u{5dd}\u{200f} \u{915}\u{94d}\u{200c}"
        )
        .is_ok());
    }

    #[test]
    fn a_search_matches_wildcards_as_typed() {
        assert_eq!(contains_pattern("ann"), "%ann%");
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn notes_are_trimmed_and_at_most_2000_characters() {
        assert_eq!(check_note("The note", "  fine \n").unwrap(), "fine");
        assert_eq!(check_note("The note", &"é".repeat(2000)).unwrap().chars().count(), 2000);
        let err = check_note("The reason", &"a".repeat(2001)).unwrap_err();
        assert_eq!(err.to_string(), "The reason can have at most 2000 characters.");
        assert!(check_note("The note", "bell\u{7}").is_err());
    }
}
