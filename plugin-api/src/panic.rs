//! What a caught panic said, for the error that reports it: a component that runs work in a
//! task or a thread of its own turns a panic there into a failure rather than losing the task.

use std::any::Any;

/// The message a panic was raised with, when it was a string (as `panic!` makes it).
pub fn panic_message(panic: &(dyn Any + Send)) -> Option<&str> {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_of_a_literal_or_a_formatted_panic() {
        let literal = std::panic::catch_unwind(|| panic!("a bug")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), Some("a bug"));
        let formatted = std::panic::catch_unwind(|| panic!("bug {}", 2)).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), Some("bug 2"));
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), None);
    }
}
