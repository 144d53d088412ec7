//! An error and its sources as one line, for messages an operator reads (`cannot reach …: connection
//! refused`), each cause once.
//!
//! Owns the formatting only. Imports nothing from this crate (leaf).

/// `e`, then each of its sources not already in the text so far, joined by `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn sources_are_joined_once_each() {
        let e = E(
            "cannot reach the server: timed out",
            Some(Box::new(E(
                "timed out",
                Some(Box::new(E("os error 110", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "cannot reach the server: timed out: os error 110"
        );
    }
}
