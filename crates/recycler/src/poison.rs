//! The `Poison` trait: returned values are overwritten with garbage in debug builds,
//! so a stale reader sees a pattern, not plausible data.

use std::collections::VecDeque;

/// The byte pattern byte buffers are filled with when they are returned:
/// `0xDE 0xAD 0xBE 0xEF`, repeated.
pub const POISON_PATTERN: [u8; 4] = [0xDE, 0xAD, 0xBE, 0xEF];

/// A value that can be filled with a recognisable garbage pattern while it sits
/// idle in a recycler.
///
/// With debug checks on ([`DEBUG_CHECKS`](crate::DEBUG_CHECKS)) and poisoning
/// enabled ([`RecyclerBuilder::poison`](crate::RecyclerBuilder::poison)), a returned
/// value is reset, then [`poison`](Poison::poison)ed, then stored. Anyone still
/// looking at it through a path the borrow checker cannot see (a raw pointer handed
/// to C, a clone of a shared handle inside the value) reads the pattern instead of
/// the last user's data. When the value is handed out again the recycler checks
/// [`is_poisoned`](Poison::is_poisoned): if someone wrote to it while it was idle,
/// `get()` panics, naming the recycler. The value is then reset once more, so
/// `poison` may leave it in any state `reset` repairs.
///
/// Byte buffers are filled to their capacity with [`POISON_PATTERN`]; a `String`,
/// which must stay UTF-8, with U+FFFD replacement characters.
///
/// ```
/// use heijunka_recycler::{Poison, POISON_PATTERN};
///
/// let mut buf: Vec<u8> = Vec::with_capacity(8);
/// buf.extend_from_slice(b"secret");
/// buf.clear();
/// buf.poison();
/// assert_eq!(&buf[..4], &POISON_PATTERN);
/// assert!(buf.is_poisoned());
/// buf[0] = b'x'; // a stale write
/// assert!(!buf.is_poisoned());
/// ```
pub trait Poison {
    /// Overwrites the value with the pattern.
    fn poison(&mut self);

    /// Whether the value still holds exactly what [`poison`](Poison::poison) wrote.
    fn is_poisoned(&self) -> bool;
}

fn pattern() -> impl Iterator<Item = u8> {
    POISON_PATTERN.iter().copied().cycle()
}

/// Fills the buffer's whole capacity with the pattern (its length becomes its
/// capacity; the next `reset` clears it).
impl Poison for Vec<u8> {
    fn poison(&mut self) {
        self.clear();
        let capacity = self.capacity();
        self.extend(pattern().take(capacity));
    }

    fn is_poisoned(&self) -> bool {
        self.len() == self.capacity() && self.iter().copied().eq(pattern().take(self.len()))
    }
}

/// Fills the deque's whole capacity with the pattern.
impl Poison for VecDeque<u8> {
    fn poison(&mut self) {
        self.clear();
        let capacity = self.capacity();
        self.extend(pattern().take(capacity));
    }

    fn is_poisoned(&self) -> bool {
        self.len() == self.capacity() && self.iter().copied().eq(pattern().take(self.len()))
    }
}

/// Fills the slice with the pattern, in place.
impl Poison for [u8] {
    fn poison(&mut self) {
        for (b, p) in self.iter_mut().zip(pattern()) {
            *b = p;
        }
    }

    fn is_poisoned(&self) -> bool {
        self.iter().copied().eq(pattern().take(self.len()))
    }
}

/// `0xDE 0xAD 0xBE 0xEF` is not UTF-8, so a `String` is filled with U+FFFD
/// replacement characters up to its capacity, and NUL bytes in the last one or two
/// bytes that do not fit a whole character.
impl Poison for String {
    fn poison(&mut self) {
        self.clear();
        let capacity = self.capacity();
        let replacement = '\u{FFFD}'.len_utf8();
        for _ in 0..capacity / replacement {
            self.push('\u{FFFD}');
        }
        for _ in 0..capacity % replacement {
            self.push('\0');
        }
    }

    fn is_poisoned(&self) -> bool {
        let capacity = self.capacity();
        let replacement = '\u{FFFD}'.len_utf8();
        let whole = capacity / replacement;
        self.len() == capacity
            && self.chars().take(whole).all(|c| c == '\u{FFFD}')
            && self.chars().skip(whole).all(|c| c == '\0')
    }
}

/// Poisons the boxed value.
impl<T: Poison + ?Sized> Poison for Box<T> {
    fn poison(&mut self) {
        (**self).poison();
    }

    fn is_poisoned(&self) -> bool {
        (**self).is_poisoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_buffers_are_filled_to_capacity_with_the_pattern() {
        let mut v: Vec<u8> = Vec::with_capacity(10);
        v.extend_from_slice(b"0123456789");
        v.poison();
        assert_eq!(v.len(), v.capacity());
        assert_eq!(&v[..8], &[0xDE, 0xAD, 0xBE, 0xEF, 0xDE, 0xAD, 0xBE, 0xEF]);
        assert!(v.is_poisoned());
        v.push(1); // grows: no longer the poisoned state
        assert!(!v.is_poisoned());

        let mut d: VecDeque<u8> = VecDeque::with_capacity(6);
        d.push_back(1);
        d.poison();
        assert!(d.is_poisoned());
        d[2] = 0;
        assert!(!d.is_poisoned());

        let mut b: Box<[u8]> = vec![1_u8; 5].into_boxed_slice();
        b.poison();
        assert_eq!(&b[..], &[0xDE, 0xAD, 0xBE, 0xEF, 0xDE]);
        assert!(b.is_poisoned());
        b[4] = 0;
        assert!(!b.is_poisoned());

        let mut empty: Vec<u8> = Vec::new();
        empty.poison();
        assert!(empty.is_poisoned() && empty.is_empty());
    }

    #[test]
    fn strings_stay_utf8_and_read_as_replacement_characters() {
        for capacity in [0, 1, 3, 7, 9] {
            let mut s = String::with_capacity(capacity);
            s.push('p');
            s.poison();
            assert_eq!(s.len(), s.capacity(), "capacity {capacity}");
            assert!(!s.contains('p'));
            assert!(s.is_poisoned(), "capacity {capacity}: {s:?}");
        }
        let mut s = String::with_capacity(6);
        s.poison();
        assert_eq!(s, "\u{FFFD}\u{FFFD}");
        s.replace_range(0..3, "abc");
        assert!(!s.is_poisoned());
    }
}
