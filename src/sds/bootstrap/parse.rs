//! The command-line forms of listeners, upstreams and the server URL.

use super::{BootstrapError, Listener, Upstream, invalid};
use crate::domain::SpiffeId;

impl std::str::FromStr for Listener {
    type Err = BootstrapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.splitn(3, ':').collect();
        let [name, port, ids] = parts[..] else {
            return Err(invalid("listener", s, "expected NAME:PORT:SPIFFE_ID[,SPIFFE_ID…]"));
        };
        Ok(Self { name: name_of("listener", name)?, port: port_of(port, true)?, allowed: ids_of(ids)? })
    }
}

impl std::str::FromStr for Upstream {
    type Err = BootstrapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.splitn(5, ':').collect();
        let [name, port, host, target, ids] = parts[..] else {
            return Err(invalid("upstream", s, "expected NAME:PORT:HOST:TARGET_PORT:SPIFFE_ID[,SPIFFE_ID…]"));
        };
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
            return Err(invalid("upstream host", host, "expected a DNS name or IPv4 address"));
        }
        Ok(Self {
            name: name_of("upstream", name)?,
            port: port_of(port, true)?,
            host: host.to_string(),
            target_port: port_of(target, false)?,
            allowed: ids_of(ids)?,
        })
    }
}

/// `https://HOST:PORT` (port 4020 when absent) of the TLS port.
pub fn parse_server_url(url: &str) -> Result<(String, u16), BootstrapError> {
    let rest = url.strip_prefix("https://").ok_or_else(|| invalid("server URL", url, "must start with https://"))?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, port_of(p, false)?),
        None => (authority, 4020),
    };
    if host.is_empty() || authority.contains('/') || host.contains(['@', '[', ']']) {
        return Err(invalid("server URL", url, "expected https://HOST[:PORT] with a DNS name or IPv4 address"));
    }
    Ok((host.to_string(), port))
}

fn name_of(what: &'static str, name: &str) -> Result<String, BootstrapError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        return Err(invalid(what, name, "names are 1-64 characters of A-Z a-z 0-9 _ - ."));
    }
    Ok(name.to_string())
}

fn port_of(port: &str, zero_ok: bool) -> Result<u16, BootstrapError> {
    match port.parse::<u16>() {
        Ok(0) if !zero_ok => Err(invalid("port", port, "must be 1-65535")),
        Ok(p) => Ok(p),
        Err(_) => Err(invalid("port", port, "must be a number 0-65535")),
    }
}

fn ids_of(ids: &str) -> Result<Vec<SpiffeId>, BootstrapError> {
    let ids: Vec<SpiffeId> = ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| SpiffeId::parse(s).map_err(BootstrapError::Id))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Err(invalid("SPIFFE ID list", "", "allow at least one SPIFFE ID"));
    }
    Ok(ids)
}
