//! The encoding machinery shared by every message.
//!
//! Fixed parts are `zerocopy` structs of little-endian fields, read with one
//! bounds-checked copy (and validated, for enum fields, by `TryFromBytes`).
//! Variable tails are length-prefixed and bounded: [`Name`] and [`Blob`] by a
//! u8 length, [`Payload`] by a u16 length, [`List`] by a u16 count.
//!
//! Decoding is total: every input becomes a value or a [`DecodeError`], with no
//! panic and no allocation (tails borrow the input). Encoding writes into the
//! caller's buffer; a buffer that is too small is reported by
//! [`Writer::finish`], never by a panic.

use core::fmt;
use core::marker::PhantomData;
use zerocopy::{Immutable, KnownLayout, TryFromBytes};

use crate::limits::NAME_BYTES_MAX;

/// Why bytes are not a valid message.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated")]
    Truncated,
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("bad protocol magic")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("invalid value in {0}")]
    InvalidField(&'static str),
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    #[error("{0} is longer than its limit")]
    TooLong(&'static str),
    #[error("bad or missing MAC")]
    BadMac,
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("message needs {needed} bytes, buffer has {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("privileged message needs a key")]
    MissingKey,
    #[error("{0} is longer than its limit")]
    TooLong(&'static str),
}

/// Appends to a caller's buffer. Overflow is sticky and reported by `finish`.
pub struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
    needed: usize,
}

impl<'b> Writer<'b> {
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, pos: 0, needed: 0 }
    }

    pub fn put(&mut self, bytes: &[u8]) {
        self.needed += bytes.len();
        if self.needed == self.pos + bytes.len()
            && let Some(target) = self.buf.get_mut(self.pos..self.pos + bytes.len())
        {
            target.copy_from_slice(bytes);
            self.pos += bytes.len();
        }
    }

    pub fn put_u8(&mut self, value: u8) {
        self.put(&[value]);
    }

    pub fn put_u16(&mut self, value: u16) {
        self.put(&value.to_le_bytes());
    }

    pub fn put_u32(&mut self, value: u32) {
        self.put(&value.to_le_bytes());
    }

    pub fn put_u64(&mut self, value: u64) {
        self.put(&value.to_le_bytes());
    }

    /// Everything written so far (all of it when nothing overflowed).
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.pos]
    }

    /// Bytes written, or the overflow.
    pub fn finish(self) -> Result<usize, EncodeError> {
        if self.needed > self.pos {
            return Err(EncodeError::BufferTooSmall { needed: self.needed, available: self.buf.len() });
        }
        Ok(self.pos)
    }
}

/// Consumes a byte string from the front.
#[derive(Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut word = [0u8; 4];
        word.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(word))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    /// Reads a fixed-layout struct, validating enum fields.
    pub fn fixed<T: TryFromBytes + KnownLayout + Immutable>(&mut self) -> Result<T, DecodeError> {
        let bytes = self.take(core::mem::size_of::<T>())?;
        T::try_read_from_bytes(bytes).map_err(|_| DecodeError::InvalidField(core::any::type_name::<T>()))
    }

    /// Fails on trailing bytes.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// A value with a wire form.
pub trait Encode {
    fn encoded_len(&self) -> usize;
    fn encode(&self, writer: &mut Writer<'_>);
}

/// A value decodable from the front of a [`Reader`], borrowing from it.
pub trait Decode<'a>: Sized {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

/// Decodes exactly one `T` from `bytes`: trailing bytes are an error.
pub fn decode_exact<'a, T: Decode<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let mut reader = Reader::new(bytes);
    let value = T::decode(&mut reader)?;
    reader.finish()?;
    Ok(value)
}

/// Encodes `value` into `buf`, returning the length.
pub fn encode_into<T: Encode + ?Sized>(value: &T, buf: &mut [u8]) -> Result<usize, EncodeError> {
    let mut writer = Writer::new(buf);
    value.encode(&mut writer);
    writer.finish()
}

/// Implements [`Encode`] and [`Decode`] for fixed-layout `zerocopy` structs.
#[macro_export]
macro_rules! fixed_wire {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::codec::Encode for $t {
            fn encoded_len(&self) -> usize {
                ::core::mem::size_of::<$t>()
            }
            fn encode(&self, writer: &mut $crate::codec::Writer<'_>) {
                writer.put(::zerocopy::IntoBytes::as_bytes(self));
            }
        }
        impl<'a> $crate::codec::Decode<'a> for $t {
            fn decode(reader: &mut $crate::codec::Reader<'a>) -> Result<Self, $crate::codec::DecodeError> {
                reader.fixed::<$t>()
            }
        }
    )*};
}

fixed_wire!(
    u8,
    [u8; 4],
    [u8; 8],
    [u8; 16],
    crate::ids::InodeId,
    crate::ids::BlockId,
    crate::ids::BlockServiceId,
    crate::ids::EggsTime
);

/// A directory entry name: 1–255 bytes of UTF-8, no `/`, no NUL, not `.` or
/// `..`. On the wire: u8 length, then the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name<'a>(&'a [u8]);

impl<'a> Name<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::InvalidName("empty"));
        }
        if bytes.len() > NAME_BYTES_MAX {
            return Err(DecodeError::InvalidName("longer than 255 bytes"));
        }
        if bytes == b"." || bytes == b".." {
            return Err(DecodeError::InvalidName("`.` and `..` are reserved"));
        }
        if bytes.iter().any(|&b| b == b'/' || b == 0) {
            return Err(DecodeError::InvalidName("contains `/` or NUL"));
        }
        if core::str::from_utf8(bytes).is_err() {
            return Err(DecodeError::InvalidName("not UTF-8"));
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Always valid UTF-8 (checked at construction).
    pub fn as_str(&self) -> &'a str {
        core::str::from_utf8(self.0).unwrap_or("")
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Encode for Name<'_> {
    fn encoded_len(&self) -> usize {
        1 + self.0.len()
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        writer.put_u8(self.0.len() as u8);
        writer.put(self.0);
    }
}

impl<'a> Decode<'a> for Name<'a> {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let len = reader.u8()? as usize;
        Name::new(reader.take(len)?)
    }
}

/// Opaque bytes with a u8 length and a per-use limit `MAX` (policy blobs,
/// error texts, host names).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Blob<'a, const MAX: usize>(&'a [u8]);

impl<'a, const MAX: usize> Blob<'a, MAX> {
    /// The length travels as a u8. An associated const is checked only where
    /// it is used, so every constructor names it.
    const FITS_U8: () = assert!(MAX <= u8::MAX as usize);

    pub fn new(bytes: &'a [u8]) -> Result<Self, EncodeError> {
        let () = Self::FITS_U8;
        if bytes.len() > MAX {
            return Err(EncodeError::TooLong("blob"));
        }
        Ok(Self(bytes))
    }

    /// Cuts `bytes` to the limit (for human-readable texts), at a UTF-8
    /// boundary when the bytes are UTF-8.
    pub fn truncating(bytes: &'a [u8]) -> Self {
        let () = Self::FITS_U8;
        let mut len = bytes.len().min(MAX);
        if let Ok(text) = core::str::from_utf8(bytes) {
            while len > 0 && !text.is_char_boundary(len) {
                len -= 1;
            }
        }
        Self(&bytes[..len])
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Lossless when UTF-8; otherwise the empty string.
    pub fn as_str(&self) -> &'a str {
        core::str::from_utf8(self.0).unwrap_or("")
    }
}

impl<const MAX: usize> fmt::Debug for Blob<'_, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(text) => write!(f, "{text:?}"),
            Err(_) => write!(f, "{:02x?}", self.0),
        }
    }
}

impl<const MAX: usize> Encode for Blob<'_, MAX> {
    fn encoded_len(&self) -> usize {
        1 + self.0.len()
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        writer.put_u8(self.0.len() as u8);
        writer.put(self.0);
    }
}

impl<'a, const MAX: usize> Decode<'a> for Blob<'a, MAX> {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let () = Self::FITS_U8;
        let len = reader.u8()? as usize;
        if len > MAX {
            return Err(DecodeError::TooLong("blob"));
        }
        Ok(Self(reader.take(len)?))
    }
}

/// Opaque bytes with a u16 length and limit `MAX` (inline span data).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Payload<'a, const MAX: usize>(&'a [u8]);

impl<'a, const MAX: usize> Payload<'a, MAX> {
    /// The length travels as a u16 (checked where used, as for [`Blob`]).
    const FITS_U16: () = assert!(MAX <= u16::MAX as usize);

    pub fn new(bytes: &'a [u8]) -> Result<Self, EncodeError> {
        let () = Self::FITS_U16;
        if bytes.len() > MAX {
            return Err(EncodeError::TooLong("payload"));
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

impl<const MAX: usize> fmt::Debug for Payload<'_, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl<const MAX: usize> Encode for Payload<'_, MAX> {
    fn encoded_len(&self) -> usize {
        2 + self.0.len()
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        writer.put_u16(self.0.len() as u16);
        writer.put(self.0);
    }
}

impl<'a, const MAX: usize> Decode<'a> for Payload<'a, MAX> {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let () = Self::FITS_U16;
        let len = reader.u16()? as usize;
        if len > MAX {
            return Err(DecodeError::TooLong("payload"));
        }
        Ok(Self(reader.take(len)?))
    }
}

/// A list of `T` with a u16 count. Decoded lists borrow the input and decode
/// their elements lazily (they were validated once, at decode); lists to be
/// encoded borrow a slice of elements.
pub struct List<'a, T> {
    repr: ListRepr<'a, T>,
}

enum ListRepr<'a, T> {
    Items(&'a [T]),
    Encoded { count: u16, bytes: &'a [u8], _marker: PhantomData<T> },
}

impl<T> Clone for List<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for List<'_, T> {}
impl<T> Clone for ListRepr<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ListRepr<'_, T> {}

impl<'a, T: Encode + Decode<'a> + Clone> List<'a, T> {
    /// A list to encode. The count is a u16: only the first 65 535 items of
    /// a longer slice are encoded (such a list never fits a datagram anyway,
    /// and the encoder reports that as a too-small buffer).
    pub fn new(items: &'a [T]) -> Self {
        Self { repr: ListRepr::Items(items) }
    }

    pub const fn empty() -> Self {
        Self { repr: ListRepr::Items(&[]) }
    }

    pub fn len(&self) -> usize {
        match self.repr {
            ListRepr::Items(items) => items.len(),
            ListRepr::Encoded { count, .. } => count as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> ListIter<'a, T> {
        match self.repr {
            ListRepr::Items(items) => ListIter::Items(items.iter()),
            ListRepr::Encoded { count, bytes, .. } => {
                ListIter::Encoded { left: count, reader: Reader::new(bytes), _marker: PhantomData }
            }
        }
    }

    /// The `index`th element.
    pub fn get(&self, index: usize) -> Option<T> {
        self.iter().nth(index)
    }
}

/// Iterator over a [`List`].
pub enum ListIter<'a, T> {
    Items(core::slice::Iter<'a, T>),
    Encoded { left: u16, reader: Reader<'a>, _marker: PhantomData<T> },
}

impl<'a, T: Decode<'a> + Clone> Iterator for ListIter<'a, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            ListIter::Items(items) => items.next().cloned(),
            ListIter::Encoded { left, reader, .. } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                // Validated at decode: an error here cannot happen, and ends
                // the iteration rather than panicking if it ever did.
                T::decode(reader).ok()
            }
        }
    }
}

impl<'a, T: Encode + Decode<'a> + Clone + fmt::Debug> fmt::Debug for List<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a, T: Encode + Decode<'a> + Clone + PartialEq> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<'a, T: Encode + Decode<'a> + Clone> Encode for List<'a, T> {
    fn encoded_len(&self) -> usize {
        2 + match self.repr {
            ListRepr::Items(items) => items.iter().take(u16::MAX as usize).map(Encode::encoded_len).sum(),
            ListRepr::Encoded { bytes, .. } => bytes.len(),
        }
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        match self.repr {
            ListRepr::Items(items) => {
                writer.put_u16(items.len().min(u16::MAX as usize) as u16);
                for item in items.iter().take(u16::MAX as usize) {
                    item.encode(writer);
                }
            }
            ListRepr::Encoded { count, bytes, .. } => {
                writer.put_u16(count);
                writer.put(bytes);
            }
        }
    }
}

impl<'a, T: Encode + Decode<'a> + Clone> Decode<'a> for List<'a, T> {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let count = reader.u16()?;
        let start = reader.rest();
        // Every element is at least one byte, so a count beyond the input is
        // refused before walking it.
        if count as usize > start.len() {
            return Err(DecodeError::Truncated);
        }
        for _ in 0..count {
            T::decode(reader)?;
        }
        let used = start.len() - reader.remaining();
        Ok(Self { repr: ListRepr::Encoded { count, bytes: &start[..used], _marker: PhantomData } })
    }
}

/// Counts how many variable-size entries fit in a response: start with the
/// bytes left after the fixed part, then `admit` each entry's encoded length.
#[derive(Clone, Copy, Debug)]
pub struct PageBudget {
    remaining: usize,
    admitted: usize,
}

impl PageBudget {
    /// A budget for a response whose datagram is at most `datagram_max`, with
    /// `fixed_bytes` taken by the header, the fixed fields and the list count.
    pub const fn new(datagram_max: usize, fixed_bytes: usize) -> Self {
        Self { remaining: datagram_max.saturating_sub(fixed_bytes), admitted: 0 }
    }

    /// Admits an entry of `len` bytes if it fits (and the count stays a u16).
    pub fn admit(&mut self, len: usize) -> bool {
        if len > self.remaining || self.admitted >= u16::MAX as usize {
            return false;
        }
        self.remaining -= len;
        self.admitted += 1;
        true
    }

    pub const fn admitted(&self) -> usize {
        self.admitted
    }

    pub const fn remaining(&self) -> usize {
        self.remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Name::new(b"hello.txt").is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", b"\xff\xfe"] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
        assert!(Name::new(&[b'a'; 255]).is_ok());
        assert!(Name::new(&[b'a'; 256]).is_err());
    }

    #[test]
    fn writer_reports_overflow_without_panicking() {
        let mut buf = [0u8; 3];
        let mut writer = Writer::new(&mut buf);
        writer.put_u64(7);
        writer.put_u8(1);
        assert_eq!(writer.finish(), Err(EncodeError::BufferTooSmall { needed: 9, available: 3 }));
    }

    #[test]
    fn list_round_trip_and_bounds() {
        let items = [1u8, 2, 3];
        let list = List::new(&items);
        let mut buf = [0u8; 16];
        let len = encode_into(&list, &mut buf).unwrap();
        assert_eq!(&buf[..len], &[3, 0, 1, 2, 3]);
        let decoded: List<'_, u8> = decode_exact(&buf[..len]).unwrap();
        assert_eq!(decoded.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        // A count far beyond the input is refused up front.
        assert_eq!(decode_exact::<List<'_, u8>>(&[0xff, 0xff, 1]).err(), Some(DecodeError::Truncated));
    }

    #[test]
    fn list_longer_than_u16_max_encodes_as_many_bytes_as_it_says() {
        let items = vec![7u8; u16::MAX as usize + 10];
        let list = List::new(&items);
        let mut buf = vec![0u8; items.len() + 2];
        let len = encode_into(&list, &mut buf).unwrap();
        assert_eq!(len, list.encoded_len());
        assert_eq!(&buf[..2], &u16::MAX.to_le_bytes());
        let decoded: List<'_, u8> = decode_exact(&buf[..len]).unwrap();
        assert_eq!(decoded.len(), u16::MAX as usize);
    }

    #[test]
    fn page_budget() {
        let mut budget = PageBudget::new(100, 90);
        assert!(budget.admit(6));
        assert!(!budget.admit(5));
        assert!(budget.admit(4));
        assert_eq!(budget.admitted(), 2);
    }
}
