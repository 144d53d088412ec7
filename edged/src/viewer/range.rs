//! The `Range` request header (RFC 9110 §14.2) for one representation of a known size.
//!
//! Owns: which bytes a single `bytes=` range asks for. Must not: read files or build responses.
//! Only one range is served: a request for several (`bytes=0-1,5-6`, which would need a
//! `multipart/byteranges` body) and anything that does not parse get the whole body, as the RFC
//! allows a server to ignore `Range`.

/// What a request asks of a body of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranged {
    /// 200 with every byte.
    Full,
    /// 206 with bytes `start..=end` (`end` < size).
    Part { start: u64, end: u64 },
    /// 416: the range starts at or past the end.
    Unsatisfiable,
}

/// Parses the `Range` header's value (`None`: no header).
pub fn parse(value: Option<&[u8]>, size: u64) -> Ranged {
    let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Ranged::Full;
    };
    let Some((unit, set)) = text.trim().split_once('=') else {
        return Ranged::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Ranged::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ranged::Full;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            None => Ranged::Full,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part {
                start: size - n.min(size),
                end: size - 1,
            },
        },
        // `a-`: from a to the end.
        (false, true) => match number(first) {
            None => Ranged::Full,
            Some(a) if a >= size => Ranged::Unsatisfiable,
            Some(a) => Ranged::Part {
                start: a,
                end: size - 1,
            },
        },
        // `a-b`.
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= size {
                    Ranged::Unsatisfiable
                } else {
                    Ranged::Part {
                        start: a,
                        end: b.min(size - 1),
                    }
                }
            }
            _ => Ranged::Full,
        },
        (true, true) => Ranged::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str, size: u64) -> Ranged {
        parse(Some(v.as_bytes()), size)
    }

    fn part(start: u64, end: u64) -> Ranged {
        Ranged::Part { start, end }
    }

    #[test]
    fn the_three_forms() {
        assert_eq!(parse(None, 10), Ranged::Full);
        assert_eq!(p("bytes=0-0", 10), part(0, 0));
        assert_eq!(p("bytes=2-5", 10), part(2, 5));
        assert_eq!(p("bytes=2-500", 10), part(2, 9));
        assert_eq!(p("bytes=7-", 10), part(7, 9));
        assert_eq!(p("bytes=-3", 10), part(7, 9));
        assert_eq!(p("bytes=-30", 10), part(0, 9));
        assert_eq!(p(" Bytes = 1 - 2 ", 10), part(1, 2));
        assert_eq!(p("bytes=65536-131071", 200_000), part(65536, 131_071));
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(p("bytes=10-", 10), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=10-20", 10), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=-1", 0), Ranged::Unsatisfiable);
        for ignored in [
            "bytes=5-2",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(p(ignored, 10), Ranged::Full, "{ignored:?}");
        }
        assert_eq!(parse(Some(&[0xff, 0xfe]), 10), Ranged::Full);
    }
}
