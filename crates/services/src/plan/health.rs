//! What the service proxy's health servers answer, as kube-proxy's `pkg/proxy/healthcheck`
//! does: the health-check node port of a LoadBalancer Service with
//! `externalTrafficPolicy: Local` (200 while this node has a ready local endpoint, so the
//! load balancer sends it traffic, 503 otherwise) and the node's proxy health (`/healthz`,
//! `/livez`: 200 while the proxy keeps up with the store, 503 once an update has waited
//! longer than the timeout). Pure: the agent owns the sockets and the clock.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// kube-proxy's default `--healthz-bind-address` port.
pub const DEFAULT_HEALTHZ_PORT: u16 = 10256;
/// How long an update may wait before the proxy is unhealthy: kube-proxy uses twice its
/// 30 s sync period.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The state one health-check node port reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealth {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Distinct addresses of the ready endpoints on this node, over all the service's ports
    /// (kube-proxy's `LocalReadyEndpoints`: terminating ones do not count, so a node left
    /// with only terminating endpoints fails the check and the load balancer drains it).
    pub local_endpoints: u32,
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status code: 200, 404, 405, 400 or 503.
    pub status: u16,
    /// Header name and value, in the order written.
    pub headers: Vec<(&'static str, String)>,
    /// The body, sent with its `Content-Length`.
    pub body: String,
}

impl Answer {
    /// The answer as an HTTP/1.1 response that closes the connection.
    pub fn to_http(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            400 => "Bad Request",
            _ => "Service Unavailable",
        };
        let mut s = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (k, v) in &self.headers {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        let _ = write!(
            s,
            "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.body.len(),
            self.body
        );
        s.into_bytes()
    }

    fn json(status: u16, body: String) -> Answer {
        Answer {
            status,
            headers: vec![
                ("Content-Type", "application/json".to_string()),
                ("X-Content-Type-Options", "nosniff".to_string()),
            ],
            body,
        }
    }

    /// Go's `http.NotFound`.
    pub fn not_found() -> Answer {
        Answer {
            status: 404,
            headers: vec![
                ("Content-Type", "text/plain; charset=utf-8".to_string()),
                ("X-Content-Type-Options", "nosniff".to_string()),
            ],
            body: "404 page not found\n".to_string(),
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// The answer of a health-check node port, whatever the request's path (kube-proxy serves
/// the same handler on every path), byte for byte as kube-proxy writes it.
pub fn service_answer(s: &ServiceHealth, proxy_healthy: bool) -> Answer {
    let n = s.local_endpoints;
    let status = if n != 0 && proxy_healthy { 200 } else { 503 };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {n},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&s.namespace),
        quote(&s.name)
    );
    let mut a = Answer::json(status, body);
    a.headers
        .push(("X-Load-Balancing-Endpoint-Weight", n.to_string()));
    a
}

/// When the proxy last brought the dataplane up to date and since when an update waits
/// (kube-proxy's `ProxyHealthServer`, one IP family).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// When the dataplane last held every change received; `None` before the first update.
    pub last_updated: Option<SystemTime>,
    /// When the oldest change the dataplane does not hold yet arrived; `None` when none waits.
    pub oldest_pending: Option<SystemTime>,
}

impl SyncState {
    /// A change arrived that the dataplane does not have yet.
    pub fn queued(&mut self, now: SystemTime) {
        self.oldest_pending.get_or_insert(now);
    }

    /// The dataplane holds every change received so far.
    pub fn updated(&mut self, now: SystemTime) {
        self.oldest_pending = None;
        self.last_updated = Some(now);
    }

    /// Healthy while starting (no update yet), while nothing waits, or while the oldest
    /// waiting change is younger than `timeout`.
    pub fn healthy(&self, now: SystemTime, timeout: Duration) -> bool {
        match (self.last_updated, self.oldest_pending) {
            (None, _) | (_, None) => true,
            (Some(_), Some(since)) => now.duration_since(since).unwrap_or_default() < timeout,
        }
    }
}

/// The answer of the node's proxy health server (`/healthz`, `/livez`; anything else 404).
/// `node_eligible` is false for a node that is being deleted (only `/healthz` reports it).
pub fn node_answer(
    path: &str,
    state: &SyncState,
    node_eligible: bool,
    now: SystemTime,
    timeout: Duration,
) -> Answer {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let proxy_healthy = state.healthy(now, timeout);
    // A healthy proxy reports the current time as its last update, as kube-proxy does (older
    // releases' "last sync loop run").
    let last = if proxy_healthy {
        now
    } else {
        state.last_updated.unwrap_or(UNIX_EPOCH)
    };
    let (last, now_s) = (quote(&go_time(last)), quote(&go_time(now)));
    match path {
        "/healthz" => {
            let ok = proxy_healthy && node_eligible;
            Answer::json(
                if ok { 200 } else { 503 },
                format!(
                    "{{\"lastUpdated\": {last},\"currentTime\": {now_s}, \"nodeEligible\": {node_eligible}}}"
                ),
            )
        }
        "/livez" => Answer::json(
            if proxy_healthy { 200 } else { 503 },
            format!("{{\"lastUpdated\": {last},\"currentTime\": {now_s}}}"),
        ),
        _ => Answer::not_found(),
    }
}

/// `t` as Go prints a `time.Time` in UTC (`2006-01-02 15:04:05.999999999 +0000 UTC`).
pub fn go_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = model::time::civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn hc(n: u32) -> ServiceHealth {
        ServiceHealth {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: n,
        }
    }

    fn header<'a>(a: &'a Answer, k: &str) -> Option<&'a str> {
        a.headers
            .iter()
            .find(|(h, _)| *h == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_node_with_local_endpoints_answers_200_with_their_count_and_weight() {
        let a = service_answer(&hc(2), true);
        assert_eq!(a.status, 200);
        assert_eq!(
            a.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(header(&a, "Content-Type"), Some("application/json"));
        assert_eq!(header(&a, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(header(&a, "X-Load-Balancing-Endpoint-Weight"), Some("2"));
    }

    #[test]
    fn no_local_endpoint_or_an_unhealthy_proxy_answers_503() {
        let a = service_answer(&hc(0), true);
        assert_eq!(a.status, 503);
        assert_eq!(header(&a, "X-Load-Balancing-Endpoint-Weight"), Some("0"));
        let a = service_answer(&hc(3), false);
        assert_eq!(a.status, 503);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["serviceProxyHealthy"], false);
        assert_eq!(v["localEndpoints"], 3);
    }

    #[test]
    fn proxy_is_healthy_while_starting_synced_or_not_late_and_unhealthy_when_late() {
        let t = Duration::from_secs(60);
        let mut s = SyncState::default();
        assert!(s.healthy(at(1000), t), "starting up");
        s.queued(at(1000));
        assert!(s.healthy(at(5000), t), "no update yet: still starting up");
        s.updated(at(1001));
        assert!(s.healthy(at(9000), t), "synced, however long ago");
        s.queued(at(1100));
        s.queued(at(1150));
        assert!(s.healthy(at(1159), t), "pending, not late");
        assert!(!s.healthy(at(1160), t), "oldest pending update waited 60 s");
        s.updated(at(1161));
        assert!(s.healthy(at(1161), t));
    }

    #[test]
    fn healthz_and_livez_answer_as_kube_proxy_and_other_paths_404() {
        let t = Duration::from_secs(60);
        let mut s = SyncState::default();
        s.updated(at(1_700_000_000));
        let now = UNIX_EPOCH + Duration::new(1_700_000_010, 500_000_000);
        let a = node_answer("/healthz", &s, true, now, t);
        assert_eq!(a.status, 200);
        assert_eq!(
            a.body,
            "{\"lastUpdated\": \"2023-11-14 22:13:30.5 +0000 UTC\",\"currentTime\": \"2023-11-14 22:13:30.5 +0000 UTC\", \"nodeEligible\": true}"
        );
        assert_eq!(header(&a, "Content-Type"), Some("application/json"));
        assert_eq!(node_answer("/healthz", &s, false, now, t).status, 503);
        assert_eq!(node_answer("/livez?verbose", &s, false, now, t).status, 200);
        s.queued(at(1_700_000_000));
        let late = at(1_700_000_100);
        let a = node_answer("/livez", &s, true, late, t);
        assert_eq!(a.status, 503);
        assert_eq!(
            a.body,
            "{\"lastUpdated\": \"2023-11-14 22:13:20 +0000 UTC\",\"currentTime\": \"2023-11-14 22:15:00 +0000 UTC\"}"
        );
        assert_eq!(node_answer("/healthz", &s, true, late, t).status, 503);
        assert_eq!(node_answer("/", &s, true, late, t).status, 404);
    }

    #[test]
    fn go_time_prints_dates_as_go_does() {
        assert_eq!(go_time(UNIX_EPOCH), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(at(951_782_400)), "2000-02-29 00:00:00 +0000 UTC");
        assert_eq!(
            go_time(UNIX_EPOCH + Duration::new(4_102_444_799, 120)),
            "2099-12-31 23:59:59.00000012 +0000 UTC"
        );
    }

    #[test]
    fn the_http_form_has_length_and_closes() {
        let text = String::from_utf8(service_answer(&hc(1), true).to_http()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 114\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n\r\n{"), "{text}");
    }
}
