//! The envelope of every UDP message: a 13-byte header, the body, and for
//! privileged kinds a 16-byte trailer: the send time and a MAC.
//!
//! ```text
//! magic [3] | version u8 | request_id u64 | kind u8 | body … | sent_at u64 | MAC [8] (kinds ≥ 0x80)
//! ```
//!
//! The magic names the protocol family (shard, CDC, shuckle), so a datagram
//! sent to the wrong daemon is refused rather than misread. A response
//! repeats the request's id and kind; kind 0x00 is an error response.
//! The MAC is `MAC(key, len ‖ header ‖ body ‖ sent_at)` with the cluster key
//! ([`crate::mac::MacKey::mac_message`]); responses to privileged requests are
//! MAC'd too, so a requester also knows who answered. The MAC proves who
//! wrote a datagram; `sent_at`, inside the MAC'd bytes, says when, so a
//! server can refuse a captured datagram replayed later
//! ([`crate::replay::ReplayGuard`], PROTOCOL.md §3).

use core::fmt;
use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::codec::{Blob, Decode, DecodeError, Encode, EncodeError, Reader, Writer};
use crate::ids::EggsTime;
use crate::limits::ERROR_TEXT_BYTES_MAX;
use crate::mac::{MAC_BYTES, MacKey, constant_time_eq};

/// Version of every datagram protocol; bumped on incompatible changes.
/// 2: privileged datagrams carry their send time before the MAC.
pub const PROTOCOL_VERSION: u8 = 2;
/// Bytes of a privileged datagram's send time (an [`EggsTime`], u64 LE).
pub const SENT_AT_BYTES: usize = 8;
/// Bytes after the body of a privileged datagram: send time, then MAC.
pub const PRIVILEGED_TRAILER_BYTES: usize = SENT_AT_BYTES + MAC_BYTES;
/// The kind of an error response.
pub const KIND_ERROR: u8 = 0x00;
/// The kind of an error response to a privileged request: MAC'd like every
/// other response to a privileged request, so a forged error cannot push
/// the requester (the CDC) into a rollback.
pub const KIND_PRIVILEGED_ERROR: u8 = KIND_ERROR | KIND_PRIVILEGED;
/// Kinds with this bit set are privileged: they carry a MAC.
pub const KIND_PRIVILEGED: u8 = 0x80;

/// Magic of requests to (and responses from) a metadata shard.
pub const SHARD_MAGIC: [u8; 3] = *b"EGS";
/// Magic of the CDC protocol.
pub const CDC_MAGIC: [u8; 3] = *b"EGC";
/// Magic of shuckle's datagram protocol.
pub const SHUCKLE_MAGIC: [u8; 3] = *b"EGK";

/// The first bytes of every datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    pub magic: [u8; 3],
    pub version: u8,
    /// Chosen by the requester, echoed in the response, reused on retries so
    /// the server can recognise a retransmission.
    pub request_id: U64,
    pub kind: u8,
}

pub const HEADER_BYTES: usize = 13;
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_BYTES);

impl Header {
    pub fn request_id(&self) -> u64 {
        self.request_id.get()
    }

    pub fn is_privileged(&self) -> bool {
        self.kind & KIND_PRIVILEGED != 0
    }
}

/// The body of a datagram: one family's request or response enum.
pub trait Body<'a>: Sized {
    const MAGIC: [u8; 3];
    fn kind(&self) -> u8;
    fn body_len(&self) -> usize;
    fn encode_body(&self, writer: &mut Writer<'_>);
    fn decode_body(kind: u8, reader: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

/// Encodes a whole datagram into `buf`. Privileged kinds need `key` and are
/// stamped with the wall clock now: the stamp is the moment of sending, like
/// a kernel's packet timestamp, so requesters need not thread a clock
/// through. [`encode_at`] takes the time explicitly (tests, replays).
pub fn encode<'a, B: Body<'a>>(
    buf: &mut [u8],
    request_id: u64,
    body: &B,
    key: Option<&MacKey>,
) -> Result<usize, EncodeError> {
    encode_at(buf, request_id, body, key, EggsTime::now())
}

/// [`encode`] with the send time `sent_at` of a privileged datagram given.
pub fn encode_at<'a, B: Body<'a>>(
    buf: &mut [u8],
    request_id: u64,
    body: &B,
    key: Option<&MacKey>,
    sent_at: EggsTime,
) -> Result<usize, EncodeError> {
    encode_with_kind(buf, request_id, body.kind(), body, key, sent_at)
}

/// Encodes the response `body` to the request whose header is `request`.
/// Servers use this rather than [`encode`]: an error answering a privileged
/// request goes out as [`KIND_PRIVILEGED_ERROR`], MAC'd with `key`.
pub fn encode_response<'a, B: Body<'a>>(
    buf: &mut [u8],
    request: &Header,
    body: &B,
    key: Option<&MacKey>,
) -> Result<usize, EncodeError> {
    encode_response_at(buf, request, body, key, EggsTime::now())
}

/// [`encode_response`] with the send time of a privileged answer given.
pub fn encode_response_at<'a, B: Body<'a>>(
    buf: &mut [u8],
    request: &Header,
    body: &B,
    key: Option<&MacKey>,
    sent_at: EggsTime,
) -> Result<usize, EncodeError> {
    let mut kind = body.kind();
    if kind == KIND_ERROR && request.is_privileged() {
        kind = KIND_PRIVILEGED_ERROR;
    }
    encode_with_kind(buf, request.request_id(), kind, body, key, sent_at)
}

/// Whether `response` may answer the request `request_kind`: the same kind,
/// or an error — which must be the MAC'd [`KIND_PRIVILEGED_ERROR`] when the
/// request was privileged. Requesters check this before trusting a reply.
pub fn response_kind_matches(request_kind: u8, response: &Header) -> bool {
    if request_kind & KIND_PRIVILEGED != 0 {
        response.kind == request_kind || response.kind == KIND_PRIVILEGED_ERROR
    } else {
        response.kind == request_kind || response.kind == KIND_ERROR
    }
}

fn encode_with_kind<'a, B: Body<'a>>(
    buf: &mut [u8],
    request_id: u64,
    kind: u8,
    body: &B,
    key: Option<&MacKey>,
    sent_at: EggsTime,
) -> Result<usize, EncodeError> {
    let header = Header { magic: B::MAGIC, version: PROTOCOL_VERSION, request_id: U64::new(request_id), kind };
    let privileged = kind & KIND_PRIVILEGED != 0;
    let mut writer = Writer::new(buf);
    writer.put(header.as_bytes());
    body.encode_body(&mut writer);
    if privileged {
        writer.put_u64(sent_at.get());
    }
    let len = writer.finish()?;
    if !privileged {
        return Ok(len);
    }
    let key = key.ok_or(EncodeError::MissingKey)?;
    let mac = key.mac_message(&buf[..len]);
    let available = buf.len();
    let slot =
        buf.get_mut(len..len + MAC_BYTES).ok_or(EncodeError::BufferTooSmall { needed: len + MAC_BYTES, available })?;
    slot.copy_from_slice(&mac);
    Ok(len + MAC_BYTES)
}

/// Reads and checks the header of a datagram of family `magic`.
pub fn peek_header(bytes: &[u8], magic: [u8; 3]) -> Result<Header, DecodeError> {
    let header = Reader::new(bytes).fixed::<Header>()?;
    if header.magic != magic {
        return Err(DecodeError::BadMagic);
    }
    if header.version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(header.version));
    }
    Ok(header)
}

/// Decodes a whole datagram. A privileged kind must carry a MAC that
/// verifies with `key` (no key: refused as [`DecodeError::BadMac`]).
pub fn decode<'a, B: Body<'a>>(bytes: &'a [u8], key: Option<&MacKey>) -> Result<(Header, B), DecodeError> {
    let header = peek_header(bytes, B::MAGIC)?;
    let mut end = bytes.len();
    if header.is_privileged() {
        if bytes.len() < HEADER_BYTES + PRIVILEGED_TRAILER_BYTES {
            return Err(DecodeError::Truncated);
        }
        end -= MAC_BYTES;
        let key = key.ok_or(DecodeError::BadMac)?;
        let expected = key.mac_message(&bytes[..end]);
        if !constant_time_eq(&expected, &bytes[end..]) {
            return Err(DecodeError::BadMac);
        }
        end -= SENT_AT_BYTES;
    }
    let mut reader = Reader::new(&bytes[HEADER_BYTES..end]);
    let body = B::decode_body(header.kind, &mut reader)?;
    reader.finish()?;
    Ok((header, body))
}

/// Where the body of a datagram of `len` bytes with `header` ends: before
/// the trailer of a privileged kind.
pub fn body_end(header: &Header, len: usize) -> usize {
    if header.is_privileged() { len.saturating_sub(PRIVILEGED_TRAILER_BYTES) } else { len }
}

/// The send time of a privileged datagram, `None` for a public one (or one
/// too short to hold it). Read it only after [`decode`] has checked the MAC.
pub fn sent_at(bytes: &[u8]) -> Option<EggsTime> {
    let header = Reader::new(bytes).fixed::<Header>().ok()?;
    if !header.is_privileged() || bytes.len() < HEADER_BYTES + PRIVILEGED_TRAILER_BYTES {
        return None;
    }
    let start = bytes.len() - PRIVILEGED_TRAILER_BYTES;
    let stamp: [u8; SENT_AT_BYTES] = bytes.get(start..start + SENT_AT_BYTES)?.try_into().ok()?;
    Some(EggsTime::new(u64::from_le_bytes(stamp)))
}

macro_rules! error_kinds {
    ($( $code:literal $name:ident $text:literal ),* $(,)?) => {
        /// Why a request failed. Codes are part of the protocol: append only.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[repr(u16)]
        pub enum ErrorKind { $( $name = $code, )* }

        impl ErrorKind {
            pub const ALL: &'static [ErrorKind] = &[$( ErrorKind::$name, )*];
            pub const fn from_u16(code: u16) -> Option<Self> {
                match code { $( $code => Some(Self::$name), )* _ => None }
            }
            /// The prototype's SCREAMING_CASE name.
            pub const fn name(self) -> &'static str {
                match self { $( Self::$name => $text, )* }
            }
        }
    };
}

error_kinds! {
    1 TooSoon "TOO_SOON",
    2 AlreadyExists "ALREADY_EXISTS",
    3 NameTooLong "NAME_TOO_LONG",
    4 StorageError "STORAGE_ERROR",
    5 NetworkError "NETWORK_ERROR",
    6 DecodeError "DECODE_ERROR",
    7 LogicError "LOGIC_ERROR",
    8 UnsupportedVersion "UNSUPPORTED_VERSION",
    9 NotFound "NOT_FOUND",
    10 NotAuthorised "NOT_AUTHORISED",
    11 BadRequest "BAD_REQUEST",
    12 BadInodeType "BAD_INODE_TYPE",
    13 TimedOut "TIMED_OUT",
    14 EdenDeadline "EDEN_DEADLINE",
    15 ShuckleError "SHUCKLE_ERROR",
    16 BadRequestIdempotentHint "BAD_REQUEST_IDEMPOTENT_HINT",
    17 NotEnoughBlockServices "NOT_ENOUGH_BLOCK_SERVICES",
    18 DirectoryNotEmpty "DIRECTORY_NOT_EMPTY",
    19 CannotOverrideTarget "CANNOT_OVERRIDE_TARGET",
    20 CrcMismatch "CRC_MISMATCH",
    21 BadSpanState "BAD_SPAN_STATE",
    22 NotOwning "NOT_OWNING",
    23 Overloaded "OVERLOADED",
    24 NoSpace "NO_SPACE",
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Encode for ErrorKind {
    fn encoded_len(&self) -> usize {
        2
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        writer.put_u16(*self as u16);
    }
}

impl<'a> Decode<'a> for ErrorKind {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        ErrorKind::from_u16(reader.u16()?).ok_or(DecodeError::InvalidField("error kind"))
    }
}

/// Human-readable detail of an error (bounded).
pub type ErrorText<'a> = Blob<'a, ERROR_TEXT_BYTES_MAX>;

/// The body of an error response (kind 0x00).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ErrorResp<'a> {
    pub kind: ErrorKind,
    pub text: ErrorText<'a>,
}

impl<'a> ErrorResp<'a> {
    pub fn new(kind: ErrorKind, text: &'a str) -> Self {
        Self { kind, text: Blob::truncating(text.as_bytes()) }
    }
}

impl Encode for ErrorResp<'_> {
    fn encoded_len(&self) -> usize {
        self.kind.encoded_len() + self.text.encoded_len()
    }
    fn encode(&self, writer: &mut Writer<'_>) {
        self.kind.encode(writer);
        self.text.encode(writer);
    }
}

impl<'a> Decode<'a> for ErrorResp<'a> {
    fn decode(reader: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self { kind: ErrorKind::decode(reader)?, text: ErrorText::decode(reader)? })
    }
}

/// Defines one protocol family: the kind enum, the request and response
/// enums (responses also have `Error`), and their [`Body`] impls.
#[macro_export]
macro_rules! message_family {
    (
        $(#[$kind_meta:meta])* kinds $Kind:ident;
        $(#[$req_meta:meta])* requests $Req:ident $(<$lt:lifetime>)?;
        $(#[$resp_meta:meta])* responses $Resp:ident;
        magic $magic:expr;
        $( $(#[$vmeta:meta])* $code:literal $Variant:ident($ReqTy:ty) => $RespTy:ty; )*
    ) => {
        $(#[$kind_meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[repr(u8)]
        pub enum $Kind { $( $(#[$vmeta])* $Variant = $code, )* }

        const _: () = { $( assert!($code != $crate::datagram::KIND_ERROR && $code != $crate::datagram::KIND_PRIVILEGED_ERROR); )* };

        impl $Kind {
            pub const ALL: &'static [$Kind] = &[$( $Kind::$Variant, )*];
            pub const fn from_u8(kind: u8) -> Option<Self> {
                match kind { $( $code => Some(Self::$Variant), )* _ => None }
            }
            pub const fn name(self) -> &'static str {
                match self { $( Self::$Variant => stringify!($Variant), )* }
            }
            pub const fn is_privileged(self) -> bool {
                (self as u8) & $crate::datagram::KIND_PRIVILEGED != 0
            }
        }

        $(#[$req_meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $Req $(<$lt>)? { $( $Variant($ReqTy), )* }

        $(#[$resp_meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $Resp<'a> {
            Error($crate::datagram::ErrorResp<'a>),
            $( $Variant($RespTy), )*
        }

        impl $(<$lt>)? $Req $(<$lt>)? {
            pub fn kind(&self) -> $Kind {
                match self { $( Self::$Variant(_) => $Kind::$Variant, )* }
            }
        }

        impl<'a> $crate::datagram::Body<'a> for $Req $(<$lt>)? {
            const MAGIC: [u8; 3] = $magic;
            fn kind(&self) -> u8 {
                $Req::kind(self) as u8
            }
            fn body_len(&self) -> usize {
                match self { $( Self::$Variant(body) => $crate::codec::Encode::encoded_len(body), )* }
            }
            fn encode_body(&self, writer: &mut $crate::codec::Writer<'_>) {
                match self { $( Self::$Variant(body) => $crate::codec::Encode::encode(body, writer), )* }
            }
            fn decode_body(kind: u8, reader: &mut $crate::codec::Reader<'a>) -> Result<Self, $crate::codec::DecodeError> {
                match $Kind::from_u8(kind) {
                    $( Some($Kind::$Variant) => Ok(Self::$Variant(<$ReqTy as $crate::codec::Decode<'a>>::decode(reader)?)), )*
                    None => Err($crate::codec::DecodeError::UnknownKind(kind)),
                }
            }
        }

        impl<'a> $Resp<'a> {
            /// The request kind this answers; `None` for an error.
            pub fn kind(&self) -> Option<$Kind> {
                match self {
                    Self::Error(_) => None,
                    $( Self::$Variant(_) => Some($Kind::$Variant), )*
                }
            }
        }

        impl<'a> $crate::datagram::Body<'a> for $Resp<'a> {
            const MAGIC: [u8; 3] = $magic;
            fn kind(&self) -> u8 {
                self.kind().map_or($crate::datagram::KIND_ERROR, |kind| kind as u8)
            }
            fn body_len(&self) -> usize {
                match self {
                    Self::Error(body) => $crate::codec::Encode::encoded_len(body),
                    $( Self::$Variant(body) => $crate::codec::Encode::encoded_len(body), )*
                }
            }
            fn encode_body(&self, writer: &mut $crate::codec::Writer<'_>) {
                match self {
                    Self::Error(body) => $crate::codec::Encode::encode(body, writer),
                    $( Self::$Variant(body) => $crate::codec::Encode::encode(body, writer), )*
                }
            }
            fn decode_body(kind: u8, reader: &mut $crate::codec::Reader<'a>) -> Result<Self, $crate::codec::DecodeError> {
                if kind == $crate::datagram::KIND_ERROR || kind == $crate::datagram::KIND_PRIVILEGED_ERROR {
                    return Ok(Self::Error(<$crate::datagram::ErrorResp<'a> as $crate::codec::Decode<'a>>::decode(reader)?));
                }
                match $Kind::from_u8(kind) {
                    $( Some($Kind::$Variant) => Ok(Self::$Variant(<$RespTy as $crate::codec::Decode<'a>>::decode(reader)?)), )*
                    None => Err($crate::codec::DecodeError::UnknownKind(kind)),
                }
            }
        }
    };
}

/// Defines a message struct: a fixed `zerocopy` head (`$Head`) followed by
/// variable tail fields, each [`Encode`] + [`Decode`]. The message derefs to
/// its head, so `request.parent` reads a head field.
#[macro_export]
macro_rules! tailed_message {
    (
        $(#[$meta:meta])*
        pub struct $Name:ident<$lt:lifetime> : $(#[$head_meta:meta])* $Head:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ftype:ty ),* $(,)?
        }
        tail {
            $( $(#[$tmeta:meta])* pub $tail:ident : $ttype:ty ),* $(,)?
        }
    ) => {
        $(#[$head_meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        #[derive(::zerocopy::TryFromBytes, ::zerocopy::IntoBytes, ::zerocopy::KnownLayout, ::zerocopy::Immutable, ::zerocopy::Unaligned)]
        #[repr(C)]
        pub struct $Head { $( $(#[$fmeta])* pub $field: $ftype, )* }

        $crate::fixed_wire!($Head);

        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Debug)]
        pub struct $Name<$lt> {
            pub head: $Head,
            $( $(#[$tmeta])* pub $tail: $ttype, )*
        }

        impl<$lt> ::core::ops::Deref for $Name<$lt> {
            type Target = $Head;
            fn deref(&self) -> &$Head {
                &self.head
            }
        }

        impl<$lt> $crate::codec::Encode for $Name<$lt> {
            fn encoded_len(&self) -> usize {
                ::core::mem::size_of::<$Head>() $( + $crate::codec::Encode::encoded_len(&self.$tail) )*
            }
            fn encode(&self, writer: &mut $crate::codec::Writer<'_>) {
                $crate::codec::Encode::encode(&self.head, writer);
                $( $crate::codec::Encode::encode(&self.$tail, writer); )*
            }
        }

        impl<$lt> $crate::codec::Decode<$lt> for $Name<$lt> {
            fn decode(reader: &mut $crate::codec::Reader<$lt>) -> Result<Self, $crate::codec::DecodeError> {
                Ok(Self {
                    head: reader.fixed::<$Head>()?,
                    $( $tail: $crate::codec::Decode::decode(reader)?, )*
                })
            }
        }
    };
}

/// Defines a fixed-layout message: one `zerocopy` struct.
#[macro_export]
macro_rules! fixed_message {
    (
        $(#[$meta:meta])*
        pub struct $Name:ident { $( $(#[$fmeta:meta])* pub $field:ident : $ftype:ty ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        #[derive(::zerocopy::TryFromBytes, ::zerocopy::IntoBytes, ::zerocopy::KnownLayout, ::zerocopy::Immutable, ::zerocopy::Unaligned)]
        #[repr(C)]
        pub struct $Name { $( $(#[$fmeta])* pub $field: $ftype, )* }

        $crate::fixed_wire!($Name);
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InodeId;
    use crate::mac::SecretKey;
    use crate::shard::{SetParentReq, ShardRequest, ShardResponse, StatReq};

    fn header_of(bytes: &[u8]) -> Header {
        peek_header(bytes, SHARD_MAGIC).unwrap()
    }

    // An error answering a privileged request is MAC'd: without the key, or
    // forged as a plain error, the requester refuses it.
    #[test]
    fn errors_to_privileged_requests_are_authenticated() {
        let key = MacKey::new(&SecretKey([3; 16]));
        let mut request = [0u8; 64];
        let set_parent = ShardRequest::SetParent(SetParentReq { dir: InodeId::ROOT, parent: InodeId::NULL });
        let len = encode(&mut request, 7, &set_parent, Some(&key)).unwrap();
        let request_header = header_of(&request[..len]);

        let error = ShardResponse::Error(ErrorResp::new(ErrorKind::DirectoryNotEmpty, "not empty"));
        let mut response = [0u8; 64];
        let len = encode_response(&mut response, &request_header, &error, Some(&key)).unwrap();
        let response_header = header_of(&response[..len]);
        assert_eq!(response_header.kind, KIND_PRIVILEGED_ERROR);
        assert!(response_kind_matches(request_header.kind, &response_header));
        assert_eq!(decode::<ShardResponse>(&response[..len], Some(&key)).unwrap().1, error);
        assert_eq!(decode::<ShardResponse>(&response[..len], None).err(), Some(DecodeError::BadMac));
        assert!(encode_response(&mut response, &request_header, &error, None).is_err());

        // A plain (unMAC'd) error is not an acceptable answer to it.
        let len = encode(&mut response, 7, &error, None).unwrap();
        assert!(!response_kind_matches(request_header.kind, &header_of(&response[..len])));
    }

    #[test]
    fn errors_to_public_requests_stay_plain() {
        let mut request = [0u8; 64];
        let stat = ShardRequest::Stat(StatReq { inode: InodeId::ROOT });
        let len = encode(&mut request, 9, &stat, None).unwrap();
        let request_header = header_of(&request[..len]);
        let error = ShardResponse::Error(ErrorResp::new(ErrorKind::NotFound, ""));
        let mut response = [0u8; 64];
        let len = encode_response(&mut response, &request_header, &error, None).unwrap();
        let response_header = header_of(&response[..len]);
        assert_eq!(response_header.kind, KIND_ERROR);
        assert!(response_kind_matches(request_header.kind, &response_header));
        assert!(!response_kind_matches(
            ShardRequest::SetParent(SetParentReq { dir: InodeId::ROOT, parent: InodeId::NULL }).kind() as u8,
            &response_header
        ));
    }
}
