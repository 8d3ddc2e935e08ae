//! Which proxy, if any, carries the call to `HTTP_ENDPOINT` — decided by the rules of the
//! original's HTTP client (Go's `http.ProxyFromEnvironment`, i.e. `golang.org/x/net/http/httpproxy`),
//! so a cluster whose egress goes through a proxy works after the swap exactly as before:
//!
//! - `HTTP_PROXY` applies to `http://` endpoints, `HTTPS_PROXY` to `https://` ones, never the
//!   other way round; each also as lower case, the upper-case one first; an empty value counts as
//!   unset; `ALL_PROXY` is not read.
//! - A proxy value without a scheme is `http://` (`proxy:3128`); `socks5://`/`socks5h://` is a
//!   SOCKS5 proxy (the proxy resolves names); other schemes are HTTP proxies. A value that is not
//!   a URL is ignored, as Go ignores it (a warning says so here).
//! - `localhost` and loopback IP literals are never proxied.
//! - `NO_PROXY`: comma-separated, trimmed, any case; `*` (everything), IPs and CIDR ranges
//!   (which match IP hosts only), `host:port` entries (that port only), `foo.com` (itself and its
//!   subdomains), `.foo.com` and `*.foo.com` (subdomains only).
//! - With `REQUEST_METHOD` set (a CGI environment), an `http://` endpoint through `HTTP_PROXY`
//!   is refused (Go fails every such request; here the start fails instead).
//!
//! The variables are read once at start, as Go reads them once per process; the rules are
//! applied to each URL a call goes to (the endpoint, and where its redirects lead).

use crate::config::{ConfigError, Env, Vars};
use base64::Engine as _;
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::net::IpAddr;
use std::task::{Context, Poll};

/// How to reach the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// An HTTP proxy: absolute-form requests for `http://` endpoints, `CONNECT` for `https://`.
    Http,
    /// A SOCKS5 proxy (names resolved by the proxy).
    Socks5,
}

/// The proxy chosen for the endpoint.
#[derive(Clone)]
pub struct Proxy {
    /// HTTP or SOCKS5.
    pub kind: ProxyKind,
    /// `http://host:port` of the proxy (the form hyper-util's connectors take).
    pub uri: Uri,
    /// The variable it came from (for logs and errors).
    pub var: &'static str,
    /// User and password from the proxy URL, percent-decoded.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("uri", &self.uri)
            .field("var", &self.var)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Proxy {
    /// `Proxy-Authorization: Basic …` for the proxy's credentials (Go sends `user:` when the
    /// URL has no password).
    pub fn basic_auth(&self) -> Option<HeaderValue> {
        let (user, password) = self.credentials.as_ref()?;
        basic_auth(user, password)
    }
}

/// `Basic base64(user:password)`, marked sensitive.
pub(crate) fn basic_auth(user: &str, password: &str) -> Option<HeaderValue> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The user and password of a URL authority (`user:pass@host`), percent-decoded as Go's URL
/// parser does; the user information ends at the last `@`, and a missing password is empty.
pub(crate) fn userinfo(authority: &str) -> Option<(String, String)> {
    let (info, _) = authority.rsplit_once('@')?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = info.split_once(':').unwrap_or((info, ""));
    Some((decode(user), decode(password)))
}

/// The first non-empty of `names`, with its name.
fn first_set(vars: &Vars<'_>, names: [&'static str; 2]) -> Option<(&'static str, String)> {
    names
        .into_iter()
        .find_map(|n| vars.optional(n).map(|v| (n, v)))
}

/// The proxy variables, read once at start as Go read them once per process, applied to each
/// URL a call goes to (`HTTP_ENDPOINT`, and where its redirects lead).
#[derive(Clone, Debug, Default)]
pub struct ProxyRules {
    http: Option<Proxy>,
    https: Option<Proxy>,
    no_proxy: String,
}

impl ProxyRules {
    /// Reads `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (and lower case) and `REQUEST_METHOD`.
    /// Values Go would ignore are ignored, with a line added to `warnings`. Fails only where
    /// the proxy that applies to `endpoint` cannot be used (an `https://` proxy, or the CGI
    /// rule).
    pub fn from_env(
        env: &dyn Env,
        endpoint: &Uri,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let mut read = |names: [&'static str; 2]| -> Option<Result<Proxy, ConfigError>> {
            let (var, value) = first_set(&vars, names)?;
            match parse_proxy(var, &value) {
                Ok(Some(proxy)) => Some(Ok(proxy)),
                Ok(None) => {
                    warnings.push(format!(
                        "{var} is not a URL the original's HTTP client could use; calls go direct, as they did there"
                    ));
                    None
                }
                Err(e) => Some(Err(e)),
            }
        };
        let http = read(["HTTP_PROXY", "http_proxy"]);
        let https = read(["HTTPS_PROXY", "https_proxy"]);
        let no_proxy = first_set(&vars, ["NO_PROXY", "no_proxy"])
            .map(|(_, v)| v)
            .unwrap_or_default();
        let endpoint_https = endpoint.scheme_str() == Some("https");
        // A proxy we cannot use is an error only where it would carry the endpoint's calls.
        let applies = |rules_no_proxy: &str| {
            let host = endpoint.host().unwrap_or_default();
            let port = endpoint
                .port_u16()
                .unwrap_or(if endpoint_https { 443 } else { 80 });
            use_proxy(host, port, rules_no_proxy)
        };
        let (mine, other) = if endpoint_https {
            (https, http)
        } else {
            (http, https)
        };
        let mine = match mine {
            Some(Err(e)) if applies(&no_proxy) => return Err(e),
            Some(Ok(p)) => Some(p),
            _ => None,
        };
        let cgi = vars.optional("REQUEST_METHOD").is_some();
        if let Some(p) = &mine
            && !endpoint_https
            && cgi
            && applies(&no_proxy)
        {
            return Err(ConfigError::conflict(
                p.var,
                "refusing to use HTTP_PROXY in a CGI environment (REQUEST_METHOD is set), as Go does",
            ));
        }
        let other = match other {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                warnings.push(format!(
                    "{e}; it applies only to redirects to the other scheme, which go direct"
                ));
                None
            }
            None => None,
        };
        let (mut http, https) = if endpoint_https {
            (other, mine)
        } else {
            (mine, other)
        };
        // Go fails http calls through HTTP_PROXY in a CGI environment; none is ever made
        // through it here (the endpoint's own case was refused above).
        if cgi {
            http = None;
        }
        Ok(Self {
            http,
            https,
            no_proxy,
        })
    }

    /// The rules as the original's gRPC (grpc-go) applied them to its connections: it only
    /// ever asks about `https://host:port`, so only `HTTPS_PROXY` (and `NO_PROXY`) count, and
    /// whatever the proxy URL's scheme it dials the proxy's `host:port` and sends a clear-text
    /// `CONNECT` — an `https://` proxy URL included, which is taken the same way here (grpc-go's
    /// `Documentation/proxy.md`). Values Go could not parse are ignored, as there.
    pub fn grpc_from_env(env: &dyn Env) -> Self {
        let vars = Vars::new(env);
        let https = first_set(&vars, ["HTTPS_PROXY", "https_proxy"]).and_then(|(var, value)| {
            let value = value.trim();
            let plain = match value.get(..8) {
                Some(scheme) if scheme.eq_ignore_ascii_case("https://") => {
                    format!("http://{}", &value[8..])
                }
                _ => value.to_owned(),
            };
            parse_proxy(var, &plain).ok().flatten()
        });
        Self {
            http: None,
            https,
            no_proxy: first_set(&vars, ["NO_PROXY", "no_proxy"])
                .map(|(_, v)| v)
                .unwrap_or_default(),
        }
    }

    /// The proxy for `https` (or `http`) URLs before `NO_PROXY` and the loopback rule, for
    /// clients that apply those themselves.
    pub fn for_scheme(&self, https: bool) -> Option<&Proxy> {
        if https { &self.https } else { &self.http }.as_ref()
    }

    /// `NO_PROXY` as given.
    pub fn no_proxy(&self) -> &str {
        &self.no_proxy
    }

    /// The proxy for a call to `uri`, or `None` for a direct connection.
    pub fn for_uri(&self, uri: &Uri) -> Option<&Proxy> {
        let https = uri.scheme_str() == Some("https");
        let proxy = if https { &self.https } else { &self.http }.as_ref()?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        use_proxy(uri.host()?, port, &self.no_proxy).then_some(proxy)
    }
}

/// Go's `parseProxy`: a URL, else `http://` + the value; `None` when neither parses.
fn parse_proxy(var: &'static str, value: &str) -> Result<Option<Proxy>, ConfigError> {
    // Go's URL parser refuses control characters (a Secret's trailing newline); the WHATWG
    // parser would drop them and use the proxy.
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Ok(None);
    }
    let with_authority = |v: &str| {
        v.parse::<Uri>()
            .ok()
            .filter(|u| u.scheme().is_some() && u.authority().is_some_and(|a| !a.host().is_empty()))
    };
    let Some(uri) = with_authority(value).or_else(|| with_authority(&format!("http://{value}")))
    else {
        return Ok(None);
    };
    let (kind, default_port) = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("socks5" | "socks5h") => (ProxyKind::Socks5, 1080),
        Some("https") => {
            return Err(ConfigError::conflict(
                var,
                "a proxy reached over TLS (https://) is not supported; give the proxy as http://host:port (CONNECT still carries https endpoints encrypted end to end)",
            ));
        }
        _ => (ProxyKind::Http, 80),
    };
    let credentials = uri.authority().and_then(|a| userinfo(a.as_str()));
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(default_port);
    let uri: Uri = format!("http://{host}:{port}")
        .parse()
        .map_err(|_| ConfigError::invalid_secret(var, "a proxy URL such as http://proxy:3128"))?;
    Ok(Some(Proxy {
        kind,
        uri,
        var,
        credentials,
    }))
}

/// Go's `useProxy`: false for localhost, loopback literals and `NO_PROXY` matches.
fn use_proxy(host: &str, port: u16, no_proxy: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "localhost" {
        return false;
    }
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_some_and(is_loopback) {
        return false;
    }
    let host = host.to_ascii_lowercase();
    for entry in no_proxy.split(',') {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return false;
        }
        if let Some((net, bits)) = parse_cidr(&entry) {
            if ip.is_some_and(|ip| in_network(ip, net, bits)) {
                return false;
            }
            continue;
        }
        let (name, entry_port) = split_host_port(&entry);
        if entry_port.is_some_and(|p| p != port) {
            continue;
        }
        if let Ok(entry_ip) = name.parse::<IpAddr>() {
            if ip.is_some_and(|ip| same_ip(ip, entry_ip)) {
                return false;
            }
            continue;
        }
        // Domain entries never match an IP host (Go since CVE-2025-22870).
        if ip.is_some() || name.is_empty() {
            continue;
        }
        let (suffix, itself) = match name.strip_prefix("*.").or_else(|| name.strip_prefix('.')) {
            Some(rest) => (format!(".{rest}"), false),
            None => (format!(".{name}"), true),
        };
        if host.ends_with(&suffix) || (itself && host == suffix[1..]) {
            return false;
        }
    }
    true
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `net.IP.Equal`: an IPv4 address equals its IPv4-mapped IPv6 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// `host:port` or `[v6]:port` with a port; otherwise the whole entry, without a port.
fn split_host_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
    {
        return (host, port.parse().ok().or(Some(0)));
    }
    match entry.rsplit_once(':') {
        // One colon only: a bare IPv6 address has several and no port.
        Some((host, port)) if !host.contains(':') && !host.is_empty() => {
            // Go does not check the port's digits; a port that is no number matches nothing.
            (host, Some(port.parse().unwrap_or(0)))
        }
        _ => (entry, None),
    }
}

fn parse_cidr(entry: &str) -> Option<(IpAddr, u8)> {
    let (net, bits) = entry.split_once('/')?;
    let net: IpAddr = net.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((net, bits))
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let mask = |len: u32| {
        if bits == 0 {
            0
        } else {
            u128::MAX << (len - u32::from(bits))
        }
    };
    match (same_family(ip, net), net) {
        (Some(IpAddr::V4(a)), IpAddr::V4(n)) => {
            let m = mask(32) as u32;
            u32::from(a) & m == u32::from(n) & m
        }
        (Some(IpAddr::V6(a)), IpAddr::V6(n)) => {
            let m = mask(128);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// `ip` in the family of `net` (an IPv4-mapped address counts as IPv4).
fn same_family(ip: IpAddr, net: IpAddr) -> Option<IpAddr> {
    match (ip, net) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => Some(ip),
        (IpAddr::V6(v6), IpAddr::V4(_)) => v6.to_ipv4_mapped().map(IpAddr::V4),
        _ => None,
    }
}

/// Opens connections for the HTTP client: direct, or through the proxy (`CONNECT` for `https`
/// endpoints, the proxy itself for `http` ones, SOCKS5 for both). TLS to the endpoint is added
/// on top by the caller, end to end.
#[derive(Clone, Debug)]
pub struct ProxyConnector {
    http: HttpConnector,
    route: Route,
}

#[derive(Clone, Debug)]
enum Route {
    /// The proxy the rules pick for each destination, as Go's HTTP client.
    Rules(std::sync::Arc<ProxyRules>),
    /// Always this proxy, and a tunnel even for `http` destinations, as Go's gRPC (whose
    /// clear-text HTTP/2 an absolute-form proxy could not carry).
    Tunnel(Proxy),
}

impl ProxyConnector {
    /// Connects with `http` (TCP), through the proxy `rules` pick for each destination.
    pub fn new(http: HttpConnector, rules: std::sync::Arc<ProxyRules>) -> Self {
        Self {
            http,
            route: Route::Rules(rules),
        }
    }

    /// Connects with `http` (TCP) to every destination through a tunnel opened by `proxy`
    /// (`CONNECT`, or SOCKS5), whatever the destination's scheme.
    pub fn tunnel(http: HttpConnector, proxy: Proxy) -> Self {
        Self {
            http,
            route: Route::Tunnel(proxy),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = ProxiedIo;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<ProxiedIo, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A fresh connector is made per call below; TCP connectors are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let (proxy, always_tunnel) = match &self.route {
            Route::Rules(rules) => (rules.for_uri(&dst).cloned(), false),
            Route::Tunnel(proxy) => (Some(proxy.clone()), true),
        };
        Box::pin(async move {
            let Some(proxy) = proxy else {
                let io = ready_then_call(&mut http, dst).await?;
                return Ok(ProxiedIo { io, proxied: false });
            };
            let https = dst.scheme_str() == Some("https");
            let (io, proxied) = match proxy.kind {
                ProxyKind::Http if https || always_tunnel => {
                    let mut tunnel = Tunnel::new(proxy.uri.clone(), http);
                    if let Some(auth) = proxy.basic_auth() {
                        tunnel = tunnel.with_auth(auth);
                    }
                    (ready_then_call(&mut tunnel, with_port(dst)).await?, false)
                }
                // Plain http: talk to the proxy, which takes the absolute-form request.
                ProxyKind::Http => (ready_then_call(&mut http, proxy.uri.clone()).await?, true),
                ProxyKind::Socks5 => {
                    let mut socks = SocksV5::new(proxy.uri.clone(), http);
                    if let Some((user, password)) = proxy.credentials.clone() {
                        socks = socks.with_auth(user, password);
                    }
                    // hyper-util assumes port 443 when the destination names none.
                    (ready_then_call(&mut socks, with_port(dst)).await?, false)
                }
            };
            Ok(ProxiedIo { io, proxied })
        })
    }
}

async fn ready_then_call<S>(service: &mut S, dst: Uri) -> Result<S::Response, BoxError>
where
    S: tower_service::Service<Uri>,
    S::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(dst).await.map_err(Into::into)
}

fn with_port(dst: Uri) -> Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let host = dst.host().unwrap_or_default();
    let scheme = dst.scheme_str().unwrap_or("http");
    format!("{scheme}://{host}:{port}/").parse().unwrap_or(dst)
}

/// A connection, telling the client whether it leads to an HTTP proxy (then requests are sent
/// in absolute form).
#[derive(Debug)]
pub struct ProxiedIo {
    io: TokioIo<tokio::net::TcpStream>,
    proxied: bool,
}

impl Connection for ProxiedIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for ProxiedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxiedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn for_endpoint(
        env: &[(&str, &str)],
        endpoint: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Proxy>, ConfigError> {
        let endpoint: Uri = endpoint.parse().unwrap();
        let rules = ProxyRules::from_env(&env.to_vec(), &endpoint, warnings)?;
        Ok(rules.for_uri(&endpoint).cloned())
    }

    fn proxy(env: &[(&str, &str)], endpoint: &str) -> Option<String> {
        for_endpoint(env, endpoint, &mut Vec::new())
            .unwrap()
            .map(|p| p.uri.to_string())
    }

    #[test]
    fn scheme_and_precedence_as_go() {
        let env = [("HTTP_PROXY", "p1:3128"), ("HTTPS_PROXY", "http://p2:8080")];
        assert_eq!(
            proxy(&env, "http://fn.example/x").as_deref(),
            Some("http://p1:3128/")
        );
        assert_eq!(
            proxy(&env, "https://fn.example/x").as_deref(),
            Some("http://p2:8080/")
        );
        assert_eq!(proxy(&[("HTTPS_PROXY", "p2")], "http://fn.example/"), None);
        assert_eq!(proxy(&[("HTTP_PROXY", "p1")], "https://fn.example/"), None);
        // Upper case first; an empty upper-case value falls through to the lower-case one.
        let both = [("HTTP_PROXY", "upper"), ("http_proxy", "lower")];
        assert_eq!(
            proxy(&both, "http://f/").as_deref(),
            Some("http://upper:80/")
        );
        let empty = [("HTTP_PROXY", ""), ("http_proxy", "lower")];
        assert_eq!(
            proxy(&empty, "http://f/").as_deref(),
            Some("http://lower:80/")
        );
        assert_eq!(proxy(&[("ALL_PROXY", "p")], "http://f/"), None);
        assert_eq!(
            proxy(&[("HTTP_PROXY", "socks5://s")], "http://f/").as_deref(),
            Some("http://s:1080/")
        );
    }

    #[test]
    fn loopback_is_never_proxied() {
        let env = [("HTTP_PROXY", "p:3128")];
        for direct in [
            "http://localhost:8080/",
            "http://127.0.0.1/",
            "http://127.9.9.9/",
            "http://[::1]:80/",
        ] {
            assert_eq!(proxy(&env, direct), None, "{direct}");
        }
        for proxied in [
            "http://LOCALHOST/",
            "http://foo.localhost/",
            "http://10.0.0.1/",
        ] {
            assert!(proxy(&env, proxied).is_some(), "{proxied}");
        }
    }

    #[test]
    fn no_proxy_as_go() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "http://anything/", false),
            ("*", "http://10.1.1.1/", false),
            ("foo.com", "http://foo.com/", false),
            ("foo.com", "http://bar.foo.com/", false),
            ("foo.com", "http://barfoo.com/", true),
            (".foo.com", "http://foo.com/", true),
            (".foo.com", "http://bar.foo.com/", false),
            ("*.foo.com", "http://foo.com/", true),
            ("*.foo.com", "http://bar.foo.com/", false),
            ("foo.com:80", "http://foo.com/", false),
            ("foo.com:8080", "http://foo.com/", true),
            ("10.0.0.0/8", "http://10.2.3.4/", false),
            ("10.0.0.0/8", "http://11.2.3.4/", true),
            ("10.1.2.3", "http://10.1.2.3:9/", false),
            ("10.1.2.3:80", "http://10.1.2.3:9/", true),
            ("fd00::/8", "http://[fd00::1]/", false),
            ("2001:db8::1", "http://[2001:db8::1]/", false),
            ("[2001:db8::1]:80", "http://[2001:db8::1]/", false),
            ("10.0.0.0", "http://router.fission/", true),
            ("router.fission", "http://10.0.0.1/", true),
            (" ROUTER.fission , x", "http://router.fission/", false),
            ("", "http://router.fission/", true),
        ];
        for (no, endpoint, proxied) in cases {
            let env = [("HTTP_PROXY", "p:3128"), ("NO_PROXY", no)];
            assert_eq!(
                proxy(&env, endpoint).is_some(),
                *proxied,
                "NO_PROXY={no:?} {endpoint}"
            );
        }
        let lower = [("HTTP_PROXY", "p:3128"), ("no_proxy", "f")];
        assert_eq!(proxy(&lower, "http://f/"), None);
    }

    #[test]
    fn credentials_cgi_and_unusable_values() {
        let mut warnings = Vec::new();
        let env = [("HTTPS_PROXY", "http://us%40er:p%3Ass@p:3128")];
        let p = for_endpoint(&env, "https://f/", &mut warnings)
            .unwrap()
            .unwrap();
        assert_eq!(p.credentials, Some(("us@er".to_owned(), "p:ss".to_owned())));
        assert_eq!(
            p.basic_auth().unwrap().to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("us@er:p:ss")
            )
        );
        assert!(!format!("{p:?}").contains("p:ss"));
        let cgi = [("HTTP_PROXY", "p"), ("REQUEST_METHOD", "GET")];
        assert!(for_endpoint(&cgi, "http://f/", &mut warnings).is_err());
        let tls = [("HTTP_PROXY", "https://p")];
        let e = for_endpoint(&tls, "http://f/", &mut warnings).unwrap_err();
        assert_eq!(e.var(), "HTTP_PROXY");
        assert!(warnings.is_empty());
        // A proxy that would not carry the endpoint's calls is no reason to refuse the start,
        // but worth a warning.
        let unused = [("HTTPS_PROXY", "https://p")];
        assert!(
            for_endpoint(&unused, "http://f/", &mut warnings)
                .unwrap()
                .is_none()
        );
        assert_eq!(warnings.len(), 1);
        // In a CGI environment HTTP_PROXY carries nothing, even where the endpoint is exempt.
        let cgi_exempt = [
            ("HTTP_PROXY", "p"),
            ("REQUEST_METHOD", "GET"),
            ("NO_PROXY", "f"),
        ];
        let endpoint: Uri = "http://f/".parse().unwrap();
        let rules = ProxyRules::from_env(&cgi_exempt.to_vec(), &endpoint, &mut warnings).unwrap();
        assert!(
            rules
                .for_uri(&"http://elsewhere/".parse().unwrap())
                .is_none()
        );
        let junk = [("HTTP_PROXY", "http://p:3128\n")];
        assert_eq!(
            for_endpoint(&junk, "http://f/", &mut warnings)
                .unwrap()
                .map(|p| p.uri.to_string()),
            None
        );
        assert_eq!(warnings.len(), 2);
    }
}
