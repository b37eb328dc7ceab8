//! The NGSI-LD face (`/ngsi-ld/v1/`) as an integrator meets it, through a client that is not
//! ours: `tests/ngsild_client.py` drives PyPI's `ngsildclient` (its queries count then page, its
//! gets ask for JSON-LD with a context `Link`) and its HTTP session for what the library does not
//! spell (geo-queries, headers). Checked: the Smart Data Models' types and attributes, `q`, `near`
//! and `within`, paging and counting, JSON with a `Link` and JSON-LD with `@context`, the local
//! context, and tenancy: a commune's operator sees only their commune, `NGSILD-Tenant` narrows a
//! metropolitan token and never widens a commune's one, an administrator reads nothing.

use anyhow::{Context, Result};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tests::{ADMIN, SUPERVISOR, Slice, eventually, http_get_json_as, login_token, repo_root};
use tokio::io::AsyncWriteExt;

/// Runs the client's plan; its results by session, then step.
async fn run_client(gateway: &str, sessions: Value) -> Result<Value> {
    let python = repo_root().join(".tools/ngsild-venv/bin/python");
    anyhow::ensure!(python.is_file(), "{} is missing: run deploy/install-tools.sh --browser", python.display());
    let (host, port) = gateway.rsplit_once(':').context("gateway address")?;
    let plan = json!({
        "host": host,
        "port": port.parse::<u16>()?,
        "context": format!("http://{gateway}/ngsi-ld/contexts/vigie.jsonld"),
        "sessions": sessions,
    });
    let mut child = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/ngsild_client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(plan.to_string().as_bytes()).await?;
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("the NGSI-LD client did not finish within 120 s")??;
    anyhow::ensure!(output.status.success(), "the NGSI-LD client failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn lamp(id: &str, lat: f64, lon: f64) -> Streetlight {
    Streetlight { id: id.into(), lat, lon, ..Default::default() }
}

fn report(id: &str, status: LampStatus) -> ReportStatusRequest {
    ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: id.into(),
            observed_at: Some(SystemTime::now().into()),
            status: status as i32,
            power_state: PowerState::On as i32,
            illuminance_level: 0.8,
            ..Default::default()
        }),
    }
}

fn ids(entities: &Value) -> Vec<String> {
    let mut ids: Vec<String> = entities
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn raw(name: &str, path: &str, params: Value, headers: Value) -> Value {
    json!({"name": name, "kind": "raw", "path": path, "params": params, "headers": headers})
}

const WEST_1: &str = "urn:ngsi-ld:Streetlight:NGSI-W1";
const WEST_2: &str = "urn:ngsi-ld:Streetlight:NGSI-W2";
const EAST_1: &str = "urn:ngsi-ld:Streetlight:NGSI-E1";

#[tokio::test]
async fn an_ngsi_ld_client_queries_the_view_within_its_communes() -> Result<()> {
    let slice = Slice::start().await?;
    let gateway = slice.gateway_addr.clone();
    let mut lighting = slice.lighting_client().await?;
    // Two lamps 140 m apart in 34172 (west of 3.9), one 8 km away in 34129.
    let lamps = vec![lamp("NGSI-W1", 43.6, 3.85), lamp("NGSI-W2", 43.601, 3.851), lamp("NGSI-E1", 43.6, 3.95)];
    lighting.register_streetlights(RegisterStreetlightsRequest { streetlights: lamps }).await?;
    lighting.report_status(report("NGSI-W1", LampStatus::DefectiveLamp)).await?;
    lighting.report_status(report("NGSI-W2", LampStatus::Ok)).await?;
    lighting.report_status(report("NGSI-E1", LampStatus::DefectiveLamp)).await?;

    let supervisor = login_token(&gateway, SUPERVISOR).await?;
    let admin = login_token(&gateway, ADMIN).await?;
    let west = slice.add_operator("ngsi-ouest", "operator", &["34172"]).await?;
    // The view has the three reports and both failures' alarms (by day, the lamp lit and well
    // has an alarm too: lit in daytime; the queries below name the failures).
    eventually("the reports and alarms in the view", Duration::from_secs(30), || async {
        let (_, alarms) = http_get_json_as(&gateway, "/api/v1/alarms", Some(&supervisor)).await?;
        let (_, assets) = http_get_json_as(&gateway, "/api/v1/assets?domain=lighting", Some(&supervisor)).await?;
        let reported =
            assets["items"].as_array().map_or(0, |a| a.iter().filter(|a| !a["details"]["status"].is_null()).count());
        let keys: Vec<&str> = alarms["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|a| a["key"].as_str()).collect())
            .unwrap_or_default();
        let failures = ["lighting/lamp_failure/NGSI-W1", "lighting/lamp_failure/NGSI-E1"];
        Ok((failures.iter().all(|f| keys.contains(f)) && reported == 3).then_some(()))
    })
    .await?;

    let entities = "/ngsi-ld/v1/entities";
    let lamps = json!({"type": "Streetlight"});
    let ld = json!({"Accept": "application/ld+json"});
    let no_headers = json!({});
    let foreign_context = json!({"Link": "<https://example.org/ctx.jsonld>; rel=\"http://www.w3.org/ns/json-ld#context\"; type=\"application/ld+json\""});
    // 1,100 vertices (the bound is 1,000), short enough for a URL (about 16 KB).
    let ring: Vec<[f64; 2]> = (0..1_100)
        .map(|i| {
            let angle = f64::from(i) / 1_100.0 * std::f64::consts::TAU;
            [((3.85 + 0.01 * angle.cos()) * 1e4).round() / 1e4, ((43.6 + 0.01 * angle.sin()) * 1e4).round() / 1e4]
        })
        .chain(std::iter::once([3.86, 43.6]))
        .collect();
    let big_polygon = json!([ring]).to_string();
    let results = run_client(
        &gateway,
        json!([
            {"name": "supervisor", "token": supervisor, "steps": [
                {"name": "types", "kind": "types"},
                {"name": "lamps", "kind": "query", "type": "Streetlight"},
                {"name": "count", "kind": "count", "type": "Streetlight"},
                {"name": "defective", "kind": "query", "type": "Streetlight", "q": "status==\"defectiveLamp\""},
                {"name": "bright", "kind": "query", "type": "Streetlight", "q": "illuminanceLevel>0.5;powerState==\"on\""},
                {"name": "alerts", "kind": "query", "type": "Alert", "q": "subCategory==\"lamp_failure\""},
                {"name": "west_1", "kind": "get", "id": WEST_1},
                {"name": "missing", "kind": "get", "id": "urn:ngsi-ld:Streetlight:NOPE"},
                raw("near", entities, json!({"type": "Streetlight", "georel": "near;maxDistance==500",
                    "geometry": "Point", "coordinates": "[3.85,43.6]"}), no_headers.clone()),
                raw("within", entities, json!({"type": "Streetlight", "georel": "within", "geometry": "Polygon",
                    "coordinates": "[[[3.94,43.59],[3.96,43.59],[3.96,43.61],[3.94,43.61],[3.94,43.59]]]"}), no_headers.clone()),
                raw("json", entities, lamps.clone(), json!({"Accept": "application/json"})),
                raw("page", entities, json!({"type": "Streetlight", "limit": "2", "count": "true"}), no_headers.clone()),
                raw("key_values", entities, json!({"type": "Streetlight", "options": "keyValues", "attrs": "status"}), ld.clone()),
                raw("tenant_east", entities, lamps.clone(), json!({"NGSILD-Tenant": "34129"})),
                raw("foreign_context", entities, lamps.clone(), foreign_context),
                raw("bad_q", entities, json!({"type": "Streetlight", "q": "status=="}), no_headers.clone()),
                raw("too_many", entities, json!({"type": "Streetlight", "limit": "5000"}), no_headers.clone()),
                raw("no_filter", entities, json!({}), no_headers.clone()),
                raw("context", "/ngsi-ld/contexts/vigie.jsonld", json!({}), no_headers.clone()),
                // Hostile parameters: a clear 400 each, and the gateway answers after them.
                raw("huge_offset", entities, json!({"type": "Streetlight", "offset": u64::MAX.to_string()}), no_headers.clone()),
                raw("deep_q", entities, json!({"type": "Streetlight", "q": format!("{}a==1{}", "(".repeat(40), ")".repeat(40))}), no_headers.clone()),
                raw("pattern_bomb", entities, json!({"type": "Streetlight", "idPattern": "((a{100}){100}){100}"}), no_headers.clone()),
                raw("big_polygon", entities, json!({"type": "Streetlight", "georel": "within", "geometry": "Polygon",
                    "coordinates": big_polygon}), no_headers.clone()),
                raw("bad_tenant", entities, lamps.clone(), json!({"NGSILD-Tenant": "../etc"})),
                raw("unknown_parameter", entities, json!({"type": "Streetlight", "scopeQ": "/a"}), no_headers.clone()),
                raw("after", entities, lamps.clone(), no_headers.clone()),
            ]},
            {"name": "west", "token": west, "steps": [
                {"name": "lamps", "kind": "query", "type": "Streetlight"},
                {"name": "alerts", "kind": "query", "type": "Alert", "q": "subCategory==\"lamp_failure\""},
                {"name": "east_1", "kind": "get", "id": EAST_1},
                raw("tenant_east", entities, lamps.clone(), json!({"NGSILD-Tenant": "34129"})),
                raw("near_east", entities, json!({"type": "Streetlight", "georel": "near;maxDistance==500",
                    "geometry": "Point", "coordinates": "[3.95,43.6]"}), no_headers.clone()),
                raw("page", entities, json!({"type": "Streetlight", "limit": "2", "count": "true"}), no_headers.clone()),
                {"name": "types", "kind": "types"},
            ]},
            {"name": "west_tenant", "token": west, "tenant": "34172", "steps": [
                {"name": "lamps", "kind": "query", "type": "Streetlight"},
            ]},
            {"name": "admin", "token": admin, "steps": [
                raw("lamps", entities, lamps.clone(), no_headers.clone()),
            ]},
            {"name": "anonymous", "token": null, "steps": [
                raw("lamps", entities, lamps.clone(), no_headers.clone()),
            ]},
        ]),
    )
    .await?;
    let s = &results["supervisor"];
    anyhow::ensure!(s.get("_connect").is_none(), "the client did not connect: {}", s["_connect"]);

    // The library's own calls: types, paged query, count, q, get.
    let types = s["types"].as_array().context("types")?;
    assert!(types.contains(&json!("Streetlight")) && types.contains(&json!("Alert")), "{types:?}");
    assert_eq!(ids(&s["lamps"]), [EAST_1, WEST_1, WEST_2], "{}", s["lamps"]);
    assert_eq!(s["count"], 3);
    assert_eq!(ids(&s["defective"]), [EAST_1, WEST_1], "{}", s["defective"]);
    assert_eq!(ids(&s["bright"]).len(), 3, "{}", s["bright"]);
    let alerts = s["alerts"].as_array().context("alerts")?;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let west_alert = alerts
        .iter()
        .find(|a| a["alertSource"]["object"] == WEST_1)
        .with_context(|| format!("no alert from {WEST_1}: {alerts:?}"))?;
    assert_eq!(west_alert["category"]["value"], "security");
    assert!(["low", "medium", "high", "critical"].contains(&west_alert["severity"]["value"].as_str().unwrap_or("")));
    let w1 = &s["west_1"];
    assert_eq!(w1["type"], "Streetlight", "{w1}");
    assert_eq!(w1["status"]["value"], "defectiveLamp");
    assert_eq!(w1["location"]["value"]["coordinates"], json!([3.85, 43.6]));
    assert_eq!(w1["commune"]["value"], "34172");
    assert!(w1["@context"].to_string().contains("/ngsi-ld/contexts/vigie.jsonld"), "{w1}");
    assert_eq!(s["missing"]["error"], "NgsiResourceNotFoundError", "{}", s["missing"]);

    // Geo-queries.
    assert_eq!(ids(&s["near"]["body"]), [WEST_1, WEST_2], "{}", s["near"]);
    assert_eq!(ids(&s["within"]["body"]), [EAST_1], "{}", s["within"]);
    // JSON: no @context inside, a Link to it.
    let json_answer = &s["json"];
    assert_eq!(json_answer["headers"]["Content-Type"], "application/json");
    assert!(json_answer["headers"]["Link"].as_str().unwrap_or("").contains("/ngsi-ld/contexts/vigie.jsonld"));
    assert!(json_answer["body"][0].get("@context").is_none(), "{json_answer}");
    // A page of two, the count of all, a link to the next page.
    let page = &s["page"];
    assert_eq!(page["body"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["headers"]["NGSILD-Results-Count"], "3");
    assert!(page["headers"]["Link"].as_str().unwrap_or("").contains("rel=\"next\""), "{page}");
    // keyValues, attributes projected, JSON-LD.
    let kv = &s["key_values"];
    assert_eq!(kv["headers"]["Content-Type"], "application/ld+json");
    assert_eq!(kv["body"].as_array().map(Vec::len), Some(3), "{kv}");
    for entity in kv["body"].as_array().context("key values")? {
        let mut keys: Vec<&String> = entity.as_object().context("entity")?.keys().collect();
        keys.sort();
        assert_eq!(keys, ["@context", "id", "status", "type"], "{entity}");
        assert!(entity["status"].is_string(), "{entity}");
    }
    // The tenant narrows a metropolitan token, and is echoed.
    assert_eq!(ids(&s["tenant_east"]["body"]), [EAST_1], "{}", s["tenant_east"]);
    assert_eq!(s["tenant_east"]["headers"]["NGSILD-Tenant"], "34129");
    // Errors as the specification spells them.
    let problem = |answer: &Value, status: u16, kind: &str| {
        assert_eq!(answer["status"], status, "{answer}");
        assert_eq!(answer["body"]["type"], format!("https://uri.etsi.org/ngsi-ld/errors/{kind}"), "{answer}");
    };
    problem(&s["foreign_context"], 504, "LdContextNotAvailable");
    problem(&s["bad_q"], 400, "BadRequestData");
    problem(&s["too_many"], 403, "TooManyResults");
    problem(&s["no_filter"], 400, "BadRequestData");
    for (step, kind) in [
        ("huge_offset", "BadRequestData"),
        ("deep_q", "BadRequestData"),
        ("pattern_bomb", "BadRequestData"),
        ("big_polygon", "BadRequestData"),
        ("unknown_parameter", "BadRequestData"),
    ] {
        problem(&s[step], 400, kind);
    }
    problem(&s["bad_tenant"], 404, "NonexistentTenant");
    assert_eq!(ids(&s["after"]["body"]), [EAST_1, WEST_1, WEST_2], "{}", s["after"]);
    // The context is served here, with Smart Data Models' terms.
    let context = &s["context"];
    assert_eq!(context["status"], 200, "{context}");
    assert_eq!(
        context["body"]["@context"]["Streetlight"], "streetlighting:Streetlight",
        "{}",
        context["body"]["@context"]
    );

    // A commune's operator: their commune only, whatever the path.
    let w = &results["west"];
    assert_eq!(ids(&w["lamps"]), [WEST_1, WEST_2], "{}", w["lamps"]);
    let west_alerts = w["alerts"].as_array().context("west alerts")?;
    assert_eq!(west_alerts.len(), 1, "{west_alerts:?}");
    assert_eq!(west_alerts[0]["commune"]["value"], "34172");
    assert_eq!(w["east_1"]["error"], "NgsiResourceNotFoundError", "{}", w["east_1"]);
    problem(&w["tenant_east"], 404, "NonexistentTenant");
    assert_eq!(w["near_east"]["body"], json!([]), "{}", w["near_east"]);
    // Counts and pages are the commune's: two lamps, one page.
    assert_eq!(w["page"]["headers"]["NGSILD-Results-Count"], "2", "{}", w["page"]);
    assert!(!w["page"]["headers"]["Link"].as_str().unwrap_or("").contains("rel=\"next\""), "{}", w["page"]);
    let west_types = w["types"].as_array().context("west types")?;
    assert!(west_types.contains(&json!("Streetlight")) && west_types.contains(&json!("Alert")), "{west_types:?}");
    assert_eq!(ids(&results["west_tenant"]["lamps"]), [WEST_1, WEST_2], "{}", results["west_tenant"]);

    // An administrator reads no operations; no token, no answer.
    assert_eq!(results["admin"]["lamps"]["status"], 403, "{}", results["admin"]);
    let anonymous = &results["anonymous"]["lamps"];
    assert_eq!(anonymous["status"], 401, "{anonymous}");
    assert_eq!(anonymous["headers"]["WWW-Authenticate"], "Bearer");
    Ok(())
}
