//! The console's TypeScript types of the live protocol, generated from this module's types (by
//! ts-rs, which reads their serde attributes), with the vocabulary both sides share (the KPI
//! tiles, the severities). They are written to `ui-client/src/lib/protocol.generated.ts`; a test
//! fails when that file differs from what the types generate, and rewrites it when asked:
//! `VIGIE_WRITE_GENERATED=1 cargo test -p proto`.

use super::*;

/// The console's file, relative to the repository's root.
pub const GENERATED_FILE: &str = "ui-client/src/lib/protocol.generated.ts";

/// The whole file: every type of the protocol, then the shared vocabulary.
pub fn typescript() -> String {
    // JSON numbers: sequences and ids stay far below 2^53.
    let cfg = ts_rs::Config::new().with_large_int("number");
    let mut out = String::from(
        "// Generated from proto/src/live.rs by proto::live::typescript (ts-rs): do not edit.\n\
         // Rewrite it with `VIGIE_WRITE_GENERATED=1 cargo test -p proto`.\n\n",
    );
    let declarations = [
        ServerFrame::decl(&cfg),
        ServerMessage::decl(&cfg),
        ErrorCode::decl(&cfg),
        AssetRef::decl(&cfg),
        SystemNotice::decl(&cfg),
        NoticeKind::decl(&cfg),
        Upstream::decl(&cfg),
        Filter::decl(&cfg),
        ClientFrame::decl(&cfg),
        ClientMessage::decl(&cfg),
        EventSummary::decl(&cfg),
        LatLon::decl(&cfg),
        AssetState::decl(&cfg),
        AssetDetails::decl(&cfg),
        StreetlightDetails::decl(&cfg),
        VehicleDetails::decl(&cfg),
        ReportDetails::decl(&cfg),
        WaterSensorDetails::decl(&cfg),
        MeasureReading::decl(&cfg),
        AlarmState::decl(&cfg),
        AlarmComment::decl(&cfg),
        AuditEntry::decl(&cfg),
        KpiState::decl(&cfg),
        KpiSample::decl(&cfg),
        CommandState::decl(&cfg),
        CommandTarget::decl(&cfg),
        CommandAction::decl(&cfg),
    ];
    for declaration in declarations {
        out.push_str("export ");
        out.push_str(&declaration);
        out.push_str("\n\n");
    }
    let list = |items: &[&str]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    out.push_str(&format!("export const PROTOCOL_VERSION = {PROTOCOL_VERSION};\n\n"));
    out.push_str("/// The KPIs the console shows as tiles, in their order.\n");
    out.push_str(&format!("export const KPI_TILES = [{}] as const;\n\n", list(&KPI_TILES)));
    let domains: Vec<&str> =
        (crate::subject::DOMAINS.iter()).filter(|d| **d != crate::v1::Domain::Ops).map(|d| d.token()).collect();
    out.push_str("/// The domains whose assets, alarms and KPIs the view holds, in subject order.\n");
    out.push_str(&format!("export const DOMAINS = [{}] as const;\n\n", list(&domains)));
    out.push_str("/// Alarm severities, least severe first.\n");
    out.push_str(&format!("export const SEVERITIES_ASCENDING = [{}] as const;\n\n", list(&SEVERITIES)));
    out.push_str("/// WebSocket close codes of the protocol.\n");
    out.push_str(&format!(
        "export const CLOSE_CODES = {{ TOKEN_EXPIRED: {}, NO_HEARTBEAT: {}, REVOKED: {}, TOO_MANY_SNAPSHOTS: {} }} as const;\n",
        close_code::TOKEN_EXPIRED,
        close_code::NO_HEARTBEAT,
        close_code::REVOKED,
        close_code::TOO_MANY_SNAPSHOTS
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_types_are_the_ones_this_module_generates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(GENERATED_FILE);
        let generated = typescript();
        if std::env::var_os("VIGIE_WRITE_GENERATED").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} differs from what proto::live generates: run `VIGIE_WRITE_GENERATED=1 cargo test -p proto` and commit it",
            path.display()
        );
    }
}
