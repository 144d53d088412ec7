//! A cursor over the fuzzer's bytes. Reading past the end yields zeros, so every input decodes to
//! something and short inputs stay meaningful.

/// The byte that separates sections: it never occurs in UTF-8 text, so JSON, a JWT or a UUID in a
/// section can hold any text.
pub const SEP: u8 = 0xFF;

#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    pub fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.array())
    }

    /// `N` bytes, zero-padded when the input ends.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    /// Up to `n` bytes (fewer when the input ends).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// The bytes up to the next [`SEP`] (or the end), consuming the separator.
    pub fn section(&mut self) -> &'a [u8] {
        match self.data.iter().position(|&b| b == SEP) {
            Some(i) => {
                let head = &self.data[..i];
                self.data = &self.data[i + 1..];
                head
            }
            None => self.rest(),
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Text of a section: the bytes themselves when they are UTF-8, else their lossy decoding (a
/// `&str` API cannot receive anything else).
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_sections_and_zero_pads() {
        let mut c = Cursor::new(b"\x01\x02\x03ab\xFFcd\xFF\xFFe");
        assert_eq!(c.u8(), 1);
        assert_eq!(c.u16(), 0x0203);
        assert_eq!(c.section(), b"ab");
        assert_eq!(c.section(), b"cd");
        assert_eq!(c.section(), b"");
        assert_eq!(c.section(), b"e");
        assert_eq!(c.section(), b"");
        assert_eq!(c.u32(), 0);
    }
}
