//! Byte edits applied to an input a target first built valid (a signed JWT, an encrypted `.prv`),
//! so the fuzzer explores the neighbourhood of valid inputs instead of only raw noise.
//!
//! Each edit is 4 bytes of the fuzzer's input: `op, position (u16), value`. Positions wrap
//! modulo the current length, so every edit lands somewhere.

/// At most this many edits per input: enough to combine a few, cheap to apply.
pub const MAX_EDITS: usize = 16;
/// Largest block one `Fill` edit appends (`u16::MAX * 2`): enough to cross the 64 KiB license cap.
pub const MAX_FILL: usize = u16::MAX as usize * 2;

/// Applies the edits described by `script` to `data`; returns how many were applied.
pub fn apply(data: &mut Vec<u8>, script: &[u8]) -> usize {
    let mut applied = 0;
    for edit in script.chunks_exact(4).take(MAX_EDITS) {
        let (op, pos, value) = (edit[0], u16::from_be_bytes([edit[1], edit[2]]), edit[3]);
        let at = |len: usize| if len == 0 { 0 } else { pos as usize % len };
        match op % 9 {
            // Flip one bit.
            0 if !data.is_empty() => {
                let i = at(data.len());
                data[i] ^= 1 << (value & 7);
            }
            // Overwrite one byte.
            1 if !data.is_empty() => {
                let i = at(data.len());
                data[i] = value;
            }
            // Truncate.
            2 => data.truncate(at(data.len() + 1)),
            // Insert one byte.
            3 => data.insert(at(data.len() + 1), value),
            // Delete `value + 1` bytes.
            4 if !data.is_empty() => {
                let i = at(data.len());
                let end = (i + value as usize + 1).min(data.len());
                data.drain(i..end);
            }
            // Append one byte.
            5 => data.push(value),
            // Duplicate a block of `value + 1` bytes in place (a repeated chunk or segment).
            6 if !data.is_empty() => {
                let i = at(data.len());
                let end = (i + value as usize + 1).min(data.len());
                let block = data[i..end].to_vec();
                data.splice(i..i, block);
            }
            // Swap the parts before and after a position (reordered segments or chunks).
            7 => {
                let i = at(data.len() + 1);
                data.rotate_left(i);
            }
            // Append `2 * pos` copies of `value` (oversized inputs).
            8 => data.resize(data.len() + 2 * pos as usize, value),
            _ => continue,
        }
        applied += 1;
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits() {
        let mut d = b"abcdef".to_vec();
        assert_eq!(apply(&mut d, &[0, 0, 0, 5, 2, 0, 3, 0]), 2);
        assert_eq!(d, b"Abc");
        let mut d = b"abc".to_vec();
        apply(&mut d, &[8, 0, 3, b'x']);
        assert_eq!(d, b"abcxxxxxx");
        let mut d = Vec::new();
        assert_eq!(apply(&mut d, &[0, 1, 2, 3, 1, 0, 0, 0]), 0);
        assert_eq!(apply(&mut d, &[7, 9, 9, 0, 6, 1, 1, 1]), 1);
    }
}
