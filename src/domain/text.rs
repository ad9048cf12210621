//! Bounds on text that comes from outside: the one helper that shortens a
//! value before it is named in an error, a log line or an audit record, and
//! the limits every edge applies to the fields it accepts.
//!
//! Invariant: nothing a caller sends is echoed back, logged or recorded at
//! more than [`MAX_RECORDED`] bytes, whatever its size on the wire.

/// Longest value quoted in an error message or a log field.
pub const MAX_QUOTED: usize = 128;
/// Longest field of an audit record (target, reason) as stored and listed.
pub const MAX_RECORDED: usize = 1024;

/// Longest certificate serial accepted (hex; 20 octets are 40 digits).
pub const MAX_SERIAL: usize = 64;
/// Longest free-text reason (revocation, denial).
pub const MAX_REASON: usize = 1024;
/// Longest name: a CA common name, a token subject, a role.
pub const MAX_NAME: usize = 256;
/// Most DNS SANs in one certificate or entry.
pub const MAX_DNS_NAMES: usize = 100;
/// Most SPIFFE IDs listed in one request (bootstrap tokens, federation).
pub const MAX_LISTED_IDS: usize = 100;

/// `value` cut to at most `max` bytes on a character boundary, with `…` when
/// something was cut.
pub fn shorten(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_string();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// [`shorten`] to [`MAX_QUOTED`]: a value as an error message names it.
pub fn quoted(value: &str) -> String {
    shorten(value, MAX_QUOTED)
}

/// Refuses a field longer than `max` bytes, naming the field and its size
/// (never its content).
pub fn bounded<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, String> {
    if value.len() > max {
        return Err(format!("{field} of {} bytes is longer than the {max} accepted", value.len()));
    }
    Ok(value)
}

/// Refuses a list with more than `max` items, or any item longer than
/// `item_max` bytes.
pub fn bounded_list(field: &str, values: &[String], max: usize, item_max: usize) -> Result<(), String> {
    if values.len() > max {
        return Err(format!("{} {field} given; at most {max} are accepted", values.len()));
    }
    values.iter().try_for_each(|v| bounded(field, v, item_max).map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_pass_unchanged_and_long_ones_are_cut_on_a_char_boundary() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc…");
        // "é" is two bytes: a cut inside it moves back to the boundary.
        assert_eq!(shorten("aé", 2), "a…");
        assert_eq!(quoted(&"x".repeat(10_000)).len(), MAX_QUOTED + '…'.len_utf8());
    }

    #[test]
    fn bounds_name_the_field_and_size_never_the_content() {
        let huge = "s".repeat(1 << 20);
        let err = bounded("serial", &huge, MAX_SERIAL).unwrap_err();
        assert_eq!(err, format!("serial of {} bytes is longer than the {MAX_SERIAL} accepted", 1 << 20));
        assert_eq!(bounded("serial", "0a", MAX_SERIAL), Ok("0a"));
        let many = vec!["a.example".to_string(); MAX_DNS_NAMES + 1];
        assert!(bounded_list("DNS names", &many, MAX_DNS_NAMES, 253).unwrap_err().starts_with("101 DNS names"));
        assert!(bounded_list("DNS names", &[huge], MAX_DNS_NAMES, 253).unwrap_err().len() < 100);
    }
}
