//! HTTP requests of the tests, through a real client (`reqwest`, async): (status, body), with the
//! token the test logged in with at that address unless one is given. A body that is not JSON
//! reads as `null` in the JSON helpers (the status tells the test what happened).

use anyhow::{Result, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The token each gateway address is called with (see [`login`], [`use_token`]).
static TOKENS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

pub(crate) fn token_for(host_port: &str) -> Option<String> {
    TOKENS.lock().ok()?.get(host_port).cloned()
}

/// One client for the whole test binary (its connections are pooled per address).
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            // Loopback only: never through a proxy the environment names.
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            // A gateway killed and started again on its port leaves pooled connections dead.
            .pool_max_idle_per_host(0)
            .build()
            .expect("the tests' HTTP client")
    })
}

fn url(host_port: &str, path: &str) -> String {
    format!("http://{host_port}{path}")
}

async fn send(request: reqwest::RequestBuilder, token: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

/// Logs in at a gateway; returns the access token (and remembers it for that address, so that
/// the harness's requests to it carry it).
pub async fn login(host_port: &str, login: &str) -> Result<String> {
    let token = login_token(host_port, login).await?;
    use_token(host_port, &token);
    Ok(token)
}

/// Logs in at a gateway; returns the access token only.
pub async fn login_token(host_port: &str, login: &str) -> Result<String> {
    let body = serde_json::json!({"login": login, "password": crate::TEST_PASSWORD});
    let (status, answer) = http_post_json_as(host_port, "/api/v1/auth/login", &body, None).await?;
    if status != 200 {
        bail!("login {login} at {host_port}: {status} {answer}");
    }
    Ok(answer["access_token"].as_str().ok_or_else(|| anyhow!("no access_token in {answer}"))?.to_owned())
}

/// Requests of this test to `host_port` carry `token` from now on (a replica sharing the key, a
/// gateway restarted on another port).
pub fn use_token(host_port: &str, token: &str) {
    if let Ok(mut tokens) = TOKENS.lock() {
        tokens.insert(host_port.to_owned(), token.to_owned());
    }
}

/// The value of metric `name` in a Prometheus (OpenMetrics) text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A GET: (status, body).
pub async fn http_get(host_port: &str, path: &str) -> Result<(u16, String)> {
    http_get_as(host_port, path, token_for(host_port).as_deref()).await
}

/// A GET with this token (or none): (status, body).
pub async fn http_get_as(host_port: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let (status, body) = http_get_bytes_as(host_port, path, token).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET: (status, body bytes).
pub async fn http_get_bytes(host_port: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    http_get_bytes_as(host_port, path, token_for(host_port).as_deref()).await
}

/// A GET with this token (or none): (status, body bytes).
pub async fn http_get_bytes_as(host_port: &str, path: &str, token: Option<&str>) -> Result<(u16, Vec<u8>)> {
    send(client().get(url(host_port, path)), token).await
}

/// GETs a JSON document: (status, body as JSON).
pub async fn http_get_json(host_port: &str, path: &str) -> Result<(u16, serde_json::Value)> {
    http_get_json_as(host_port, path, token_for(host_port).as_deref()).await
}

/// A GET of JSON with this token (or none).
pub async fn http_get_json_as(host_port: &str, path: &str, token: Option<&str>) -> Result<(u16, serde_json::Value)> {
    let (status, body) = http_get_bytes_as(host_port, path, token).await?;
    Ok((status, json(&body)))
}

/// A DELETE with this token: (status, body).
pub async fn http_delete_as(host_port: &str, path: &str, token: &str) -> Result<(u16, String)> {
    let (status, body) = send(client().delete(url(host_port, path)), Some(token)).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// POSTs a form: (status, body).
pub async fn http_post_form(host_port: &str, path: &str, form: &str) -> Result<(u16, String)> {
    let request = client()
        .post(url(host_port, path))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form.to_owned());
    let (status, body) = send(request, None).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// POSTs a JSON body: (status, body as JSON).
pub async fn http_post_json(host_port: &str, path: &str, body: &serde_json::Value) -> Result<(u16, serde_json::Value)> {
    http_post_json_as(host_port, path, body, token_for(host_port).as_deref()).await
}

/// A POST with this token (or none), whatever the test's session at that address.
pub async fn http_post_json_as(
    host_port: &str,
    path: &str,
    body: &serde_json::Value,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    let (status, answer) = send(client().post(url(host_port, path)).json(body), token).await?;
    Ok((status, json(&answer)))
}

/// POSTs JSON from a chosen local address (any 127.x.y.z on Linux): a client elsewhere, as the
/// gateway sees it. Returns the status and the body parsed as JSON.
pub async fn http_post_json_from(
    local_ip: &str,
    host_port: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value)> {
    let from: std::net::IpAddr = local_ip.parse()?;
    let client = reqwest::Client::builder().no_proxy().local_address(from).timeout(Duration::from_secs(30)).build()?;
    let (status, answer) = send(client.post(url(host_port, path)).json(body), None).await?;
    Ok((status, json(&answer)))
}
