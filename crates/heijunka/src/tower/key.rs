//! Rate-limit keys from requests: the client's IP (with a trusted-proxy rule for
//! `X-Forwarded-For` and `Forwarded`), a header such as an API key, or a closure.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use heijunka_core::ConfigError;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Request};

/// Finds the rate-limit key of a request; `None` when it has none (see
/// [`MissingKey`](crate::tower::MissingKey) for what the layer does then).
///
/// Implemented by [`PeerIp`], [`FromHeader`], and every closure
/// `Fn(&Request<B>) -> Option<K>`.
///
/// ```
/// use heijunka::tower::KeyExtractor;
/// use http::Request;
///
/// // A tenant id from the path: `/t/{tenant}/...`.
/// let tenant = |req: &Request<()>| {
///     req.uri().path().strip_prefix("/t/")?.split('/').next().map(str::to_owned)
/// };
/// let req = Request::get("/t/acme/orders").body(()).unwrap();
/// assert_eq!(tenant.extract(&req).as_deref(), Some("acme"));
/// ```
pub trait KeyExtractor<B> {
    /// The key: hashed and compared by the limiter, cloned only when a new key
    /// is stored.
    type Key;

    /// The key of `req`, or `None` if it has none.
    fn extract(&self, req: &Request<B>) -> Option<Self::Key>;
}

impl<B, K, F> KeyExtractor<B> for F
where
    F: Fn(&Request<B>) -> Option<K>,
{
    type Key = K;

    fn extract(&self, req: &Request<B>) -> Option<K> {
        self(req)
    }
}

/// The address of the connection a request came on, as a request extension that
/// [`PeerIp`] reads.
///
/// axum's `into_make_service_with_connect_info::<SocketAddr>()` puts the address
/// in axum's own `ConnectInfo` extension, which this crate cannot name without
/// depending on axum: give [`PeerIp::peer_addr_from`] a one-line reader for it.
/// With hyper, insert `PeerAddr` per connection, with tower's `MapRequestLayer`
/// around the service you serve that connection with:
///
/// ```
/// use heijunka::tower::PeerAddr;
/// use http::Request;
/// use std::net::SocketAddr;
/// use tower::{Layer, util::MapRequestLayer};
///
/// # fn serve<S>(app: S, remote: SocketAddr) {
/// // In the accept loop, for the connection from `remote`:
/// let with_peer = MapRequestLayer::new(move |mut req: Request<()>| {
///     req.extensions_mut().insert(PeerAddr(remote));
///     req
/// })
/// .layer(app);
/// # }
/// ```
///
/// A bare `SocketAddr` extension (as some servers insert) is read too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Which header a trusted proxy writes the client's address into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, AWS and Google
    /// load balancers, Cloudflare, Envoy). The default.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// The client's IP address as the key: the connection's peer, or, only when the
/// peer is a trusted proxy, the client that proxy reports.
///
/// # Where the peer address comes from
///
/// The request extensions: what the reader given to
/// [`peer_addr_from`](Self::peer_addr_from) finds (axum's
/// `ConnectInfo<SocketAddr>`), else a [`PeerAddr`], else a `SocketAddr`. No
/// address: no key.
///
/// # Proxies
///
/// With no trusted proxy (the default, [`PeerIp::new`]), forwarding headers are
/// never read: any client can write them. With trusted proxies
/// ([`trust_proxies`](Self::trust_proxies)), a request whose peer is one of them
/// is keyed by the address in the configured [`ForwardedHeader`], read by the
/// standard rule: walk the addresses from the right (the hop nearest to us) and
/// take the first that is *not* a trusted proxy. Addresses left of it were written
/// by the client or its proxies and may be forged; it is the address our own
/// proxy saw. If every address is trusted the left-most is the client; if an
/// entry is not an address (garbage, or a `Forwarded` `for=unknown` or obfuscated
/// `for=_hidden` identifier) the walk stops there and the nearest trusted hop is
/// the key: the client is unknown, and whatever is left of it is not to be
/// believed. Only the header the proxies write is read: a proxy that appends to
/// `X-Forwarded-For` passes a client's own `Forwarded` header through untouched.
///
/// Addresses are compared in canonical form (an IPv4-mapped IPv6 address is its
/// IPv4 address), so a dual-stack socket's `::ffff:10.0.0.1` matches `10.0.0.0/8`.
///
/// ```
/// use heijunka::tower::{KeyExtractor, PeerAddr, PeerIp};
/// use http::Request;
/// use std::net::IpAddr;
///
/// let key = PeerIp::new().trust_proxies(["10.0.0.0/8", "fd00::/8"])?;
/// let mut req = Request::get("/")
///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(PeerAddr("10.0.0.1:50000".parse().unwrap()));
/// // 10.1.2.3 is a trusted hop, 203.0.113.7 the client; 6.6.6.6 may be forged.
/// assert_eq!(key.extract(&req), Some("203.0.113.7".parse::<IpAddr>().unwrap()));
///
/// // The same header from a peer that is not a trusted proxy is ignored.
/// req.extensions_mut().insert(PeerAddr("198.51.100.9:40000".parse().unwrap()));
/// assert_eq!(key.extract(&req), Some("198.51.100.9".parse::<IpAddr>().unwrap()));
/// # Ok::<(), heijunka::core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct PeerIp {
    trusted: Arc<[Cidr]>,
    header: ForwardedHeader,
    reader: Option<fn(&Extensions) -> Option<SocketAddr>>,
    /// Mask applied to an IPv6 client address (all ones: the whole address).
    v6_mask: u128,
}

impl PeerIp {
    /// The peer address as the key; no proxy trusted, forwarding headers ignored.
    pub fn new() -> Self {
        Self {
            trusted: Arc::from([]),
            header: ForwardedHeader::default(),
            reader: None,
            v6_mask: u128::MAX,
        }
    }

    /// Keys IPv6 clients by their first `len` bits (`64`: one key per /64, the
    /// block one subscriber usually gets, so rotating through its addresses
    /// gains nothing). IPv4 clients keep their whole address. Default 128 (the
    /// whole address).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `ipv6_prefix` if `len` is 0 or above 128.
    ///
    /// ```
    /// use heijunka::tower::{KeyExtractor, PeerAddr, PeerIp};
    /// use http::Request;
    /// use std::net::IpAddr;
    ///
    /// let key = PeerIp::new().ipv6_prefix(64)?;
    /// let mut req = Request::new(());
    /// req.extensions_mut().insert(PeerAddr("[2001:db8:1:2:aaaa::1]:443".parse().unwrap()));
    /// assert_eq!(key.extract(&req), Some("2001:db8:1:2::".parse::<IpAddr>().unwrap()));
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn ipv6_prefix(mut self, len: u8) -> Result<Self, ConfigError> {
        if !(1..=128).contains(&len) {
            return Err(ConfigError::new("ipv6_prefix", len, "must be in 1..=128"));
        }
        self.v6_mask = u128::MAX << (128 - u32::from(len));
        Ok(self)
    }

    /// `ip` as a key: IPv6 masked to the configured prefix.
    #[inline]
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & self.v6_mask)),
            v4 => v4,
        }
    }

    /// Trusts the proxies at these addresses or CIDR ranges (`"10.0.0.1"`,
    /// `"10.0.0.0/8"`, `"::1"`, `"fd00::/8"`), replacing any trusted before.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `trusted_proxies` naming the entry that is not an
    /// address or range, or a range with bits set past its prefix
    /// (`10.0.0.1/8`: write `10.0.0.0/8`).
    pub fn trust_proxies<I>(mut self, proxies: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let trusted: Result<Vec<Cidr>, ConfigError> = proxies
            .into_iter()
            .map(|p| Cidr::parse(p.as_ref()))
            .collect();
        self.trusted = Arc::from(trusted?);
        Ok(self)
    }

    /// The header trusted proxies write the client's address into. Default
    /// [`ForwardedHeader::XForwardedFor`].
    #[must_use]
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Reads the peer address with `reader` first, then (if it finds none) from a
    /// [`PeerAddr`] or `SocketAddr` extension. For axum, served with
    /// `into_make_service_with_connect_info::<SocketAddr>()`:
    ///
    /// ```
    /// use axum::extract::ConnectInfo;
    /// use heijunka::tower::PeerIp;
    /// use std::net::SocketAddr;
    ///
    /// let key = PeerIp::new()
    ///     .peer_addr_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
    /// ```
    #[must_use]
    pub fn peer_addr_from(mut self, reader: fn(&Extensions) -> Option<SocketAddr>) -> Self {
        self.reader = Some(reader);
        self
    }

    #[inline]
    fn peer(&self, ext: &Extensions) -> Option<SocketAddr> {
        self.reader
            .and_then(|read| read(ext))
            .or_else(|| ext.get::<PeerAddr>().map(|p| p.0))
            .or_else(|| ext.get::<SocketAddr>().copied())
    }

    #[inline]
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client's address given the peer's and the request headers.
    ///
    /// Header values are read as UTF-8 with bad bytes replaced (no allocation
    /// for a clean value): a client's junk in its own entry (nginx appends the
    /// real address to the same line) then stops the walk at that entry only,
    /// never at the trusted proxy's.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let name = match self.header {
            ForwardedHeader::XForwardedFor => http::HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => http::header::FORWARDED,
        };
        let mut nearest = peer;
        for value in headers.get_all(name).iter().rev() {
            let text = String::from_utf8_lossy(value.as_bytes());
            let step = match self.header {
                ForwardedHeader::XForwardedFor => self.walk(
                    &mut nearest,
                    text.rsplit(',')
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(parse_addr),
                ),
                ForwardedHeader::Forwarded => self.walk(
                    &mut nearest,
                    RevElements::new(&text)
                        .filter(|e| !e.trim().is_empty())
                        .map(forwarded_for),
                ),
            };
            if let Some(client) = step {
                return client;
            }
        }
        nearest
    }

    /// Walks `hops` (right to left; `None` for an entry that names no address)
    /// from `nearest`, the nearest trusted hop so far: `Some` with the client
    /// (the first untrusted address, or the nearest trusted hop when an entry
    /// names no address), `None` when every hop was trusted (`nearest` is then
    /// the last of them).
    fn walk(
        &self,
        nearest: &mut IpAddr,
        hops: impl Iterator<Item = Option<IpAddr>>,
    ) -> Option<IpAddr> {
        for hop in hops {
            let Some(ip) = hop else { return Some(*nearest) };
            let ip = ip.to_canonical();
            if !self.is_trusted(ip) {
                return Some(ip);
            }
            *nearest = ip;
        }
        None
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PeerIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIp")
            .field("trusted", &self.trusted)
            .field("header", &self.header)
            .field("ipv6_prefix", &self.v6_mask.count_ones())
            .finish_non_exhaustive()
    }
}

impl<B> KeyExtractor<B> for PeerIp {
    type Key = IpAddr;

    #[inline]
    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = self.peer(req.extensions())?.ip().to_canonical();
        if !self.is_trusted(peer) {
            return Some(self.key(peer));
        }
        Some(self.key(self.client(peer, req.headers())))
    }
}

/// An address as `X-Forwarded-For` entries and `Forwarded` nodes write it: bare,
/// or with a port (`1.2.3.4:80`, `[::1]:80`, `[::1]`).
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, port) = rest.split_once(']')?;
        let ip = v6.parse::<Ipv6Addr>().ok()?;
        // An RFC 7239 port may be a number or an obfuscated `_token`.
        return (port.is_empty() || port.starts_with(':')).then_some(IpAddr::V6(ip));
    }
    let (v4, _port) = s.split_once(':')?;
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The address in a `Forwarded` element's `for=` parameter; `None` for none,
/// `unknown`, an obfuscated identifier (`_hidden`), or anything else.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = Split::new(element, b';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim())
    })?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    if value.contains('\\') || value.starts_with('_') || value.eq_ignore_ascii_case("unknown") {
        return None;
    }
    parse_addr(value)
}

/// Whether the quote at byte `i` of `s` is escaped (an odd run of backslashes
/// before it).
fn escaped(s: &[u8], i: usize) -> bool {
    s[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// The pieces of `s` between `sep` bytes outside quoted strings, left to right.
struct Split<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Split<'a> {
    fn new(s: &'a str, sep: u8) -> Self {
        Self { rest: Some(s), sep }
    }
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let bytes = s.as_bytes();
        let mut quoted = false;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'"' && !escaped(bytes, i) {
                quoted = !quoted;
            } else if b == self.sep && !quoted {
                self.rest = Some(&s[i + 1..]);
                return Some(&s[..i]);
            }
        }
        self.rest = None;
        Some(s)
    }
}

/// The comma-separated elements of a `Forwarded` value, right to left, commas in
/// quoted strings kept. Scanning from the right means the elements our own proxies
/// wrote are read before anything the client wrote, and an unbalanced quote in
/// the client's part cannot swallow them.
struct RevElements<'a> {
    rest: Option<&'a str>,
}

impl<'a> RevElements<'a> {
    fn new(s: &'a str) -> Self {
        Self { rest: Some(s) }
    }
}

impl<'a> Iterator for RevElements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let bytes = s.as_bytes();
        let mut quoted = false;
        for i in (0..bytes.len()).rev() {
            match bytes[i] {
                b'"' if !escaped(bytes, i) => quoted = !quoted,
                b',' if !quoted => {
                    self.rest = Some(&s[..i]);
                    return Some(&s[i + 1..]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(s)
    }
}

/// An address range: `net/prefix`, host bits zero.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cidr {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl Cidr {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = |rule: &'static str| ConfigError::new("trusted_proxies", s, rule);
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("must be an IP address or a CIDR range such as 10.0.0.0/8"))?;
        let prefix = match prefix {
            None => None,
            Some(p) => Some(
                p.parse::<u8>()
                    .map_err(|_| bad("the prefix length after `/` must be a number"))?,
            ),
        };
        // An IPv4-mapped IPv6 range is its IPv4 range: `::ffff:10.0.0.0/104` is
        // `10.0.0.0/8`.
        let prefix = match (addr, addr.to_canonical(), prefix) {
            (IpAddr::V6(_), IpAddr::V4(_), Some(len)) => Some(
                len.checked_sub(96)
                    .ok_or_else(|| bad("an IPv4-mapped prefix length must be at least 96"))?,
            ),
            _ => prefix,
        };
        match addr.to_canonical() {
            IpAddr::V4(ip) => {
                let len = prefix.unwrap_or(32);
                if len > 32 {
                    return Err(bad("an IPv4 prefix length must be at most 32"));
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                let net = u32::from(ip);
                if net & !mask != 0 {
                    return Err(bad("has bits set past its prefix length"));
                }
                Ok(Self::V4 { net, mask })
            }
            IpAddr::V6(ip) => {
                let len = prefix.unwrap_or(128);
                if len > 128 {
                    return Err(bad("an IPv6 prefix length must be at most 128"));
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                let net = u128::from(ip);
                if net & !mask != 0 {
                    return Err(bad("has bits set past its prefix length"));
                }
                Ok(Self::V6 { net, mask })
            }
        }
    }

    /// Whether `ip` (canonical) is in the range.
    fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Self::V4 { net, mask }, IpAddr::V4(ip)) => u32::from(ip) & mask == net,
            (Self::V6 { net, mask }, IpAddr::V6(ip)) => u128::from(ip) & mask == net,
            _ => false,
        }
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4 { net, mask } => {
                write!(f, "{}/{}", std::net::Ipv4Addr::from(net), mask.count_ones())
            }
            Self::V6 { net, mask } => write!(f, "{}/{}", Ipv6Addr::from(net), mask.count_ones()),
        }
    }
}

/// A header's value as the key: an API key, a tenant id. Requests without the
/// header, or with it empty, have no key.
///
/// The key is a [`HeaderKey`]: taking it from a request copies nothing (it shares
/// the request's bytes: for a header hyper parsed, a reference-count increment on
/// the connection's read buffer); the limiter stores a copy of its own only for a
/// new key,
/// so a held key does not keep the request's read buffer alive. The key set's
/// memory is bounded by the limiter's `max_keys` times the longest value your
/// server accepts in a header.
///
/// ```
/// use heijunka::tower::{FromHeader, KeyExtractor};
/// use http::Request;
///
/// let key = FromHeader::new(http::HeaderName::from_static("x-api-key"));
/// let req = Request::get("/").header("x-api-key", "k-123").body(()).unwrap();
/// assert_eq!(key.extract(&req).unwrap().as_bytes(), b"k-123");
/// let anonymous = Request::get("/").body(()).unwrap();
/// assert!(key.extract(&anonymous).is_none());
/// ```
#[derive(Clone, Debug)]
pub struct FromHeader {
    name: HeaderName,
}

impl FromHeader {
    /// Keys requests by the value of header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }

    /// Keys requests by the value of the header named `name`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `header` if `name` is not a valid header name.
    ///
    /// ```
    /// use heijunka::tower::FromHeader;
    ///
    /// let key = FromHeader::named("X-Api-Key")?;
    /// assert!(FromHeader::named("not a header").is_err());
    /// # Ok::<(), heijunka::core::ConfigError>(())
    /// ```
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        HeaderName::from_bytes(name.as_bytes())
            .map(Self::new)
            .map_err(|_| ConfigError::new("header", name, "must be a valid HTTP header name"))
    }
}

impl<B> KeyExtractor<B> for FromHeader {
    type Key = HeaderKey;

    fn extract(&self, req: &Request<B>) -> Option<HeaderKey> {
        let value = req.headers().get(&self.name)?;
        (!value.is_empty()).then(|| HeaderKey(value.clone()))
    }
}

/// A header value as a rate-limit key (see [`FromHeader`]). Marked sensitive, so
/// its `Debug` does not print it.
///
/// Its `Clone` copies the bytes (a stored key owns them); taking one from a
/// request does not.
#[derive(PartialEq, Eq, Hash)]
pub struct HeaderKey(HeaderValue);

impl HeaderKey {
    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Clone for HeaderKey {
    fn clone(&self) -> Self {
        let mut copy = HeaderValue::from_bytes(self.0.as_bytes())
            .expect("the bytes of a header value are a valid header value");
        copy.set_sensitive(true);
        Self(copy)
    }
}

impl fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeaderKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_ranges_match_by_prefix() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let c = Cidr::parse("203.0.113.7").unwrap();
        assert!(c.contains(ip("203.0.113.7")));
        assert!(!c.contains(ip("203.0.113.8")));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains(ip("fd12:3456::1")));
        assert!(!c.contains(ip("fe80::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        let all6 = Cidr::parse("::/0").unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        // An IPv4-mapped range is the IPv4 range.
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(!mapped.contains(ip("11.0.0.0")));
        assert!(Cidr::parse("::ffff:10.0.0.0/8").is_err());
    }

    #[test]
    fn bad_ranges_name_the_field_and_value() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "proxy",
            "10.0.0.0/x",
            "",
        ] {
            let e = Cidr::parse(bad).unwrap_err().to_string();
            assert!(e.contains("trusted_proxies"), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn addresses_with_ports() {
        assert_eq!(parse_addr("1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_addr("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_addr("[2001:db8::1]:4711"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("[2001:db8::1]x"), None);
        assert_eq!(parse_addr("example.com"), None);
    }

    #[test]
    fn forwarded_elements_split_outside_quotes_from_the_right() {
        let v = r#"for="_a,b";proto=http, for=1.2.3.4, for="[::1]:80""#;
        let got: Vec<&str> = RevElements::new(v).collect();
        assert_eq!(
            got,
            [
                r#" for="[::1]:80""#,
                " for=1.2.3.4",
                r#"for="_a,b";proto=http"#
            ]
        );
        let got: Vec<&str> = Split::new(r#"a="x;y";for=1"#, b';').collect();
        assert_eq!(got, [r#"a="x;y""#, "for=1"]);
    }

    #[test]
    fn forwarded_for_values() {
        assert_eq!(
            forwarded_for("for=192.0.2.60;proto=http"),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            forwarded_for("proto=http; For=\"192.0.2.60:8080\""),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            forwarded_for("for=\"[2001:db8:cafe::17]:4711\""),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            forwarded_for("for=\"[2001:db8::1]:_port\""),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(forwarded_for("for=unknown"), None);
        assert_eq!(forwarded_for("for=_hidden"), None);
        assert_eq!(forwarded_for("for=\"_SEVKISEK\""), None);
        assert_eq!(forwarded_for("by=10.0.0.1;proto=https"), None);
        assert_eq!(forwarded_for("for=\"1.2.3.4"), None);
    }
}
