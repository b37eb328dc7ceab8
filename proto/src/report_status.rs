//! The names of a citizen report's lifecycle states, as published (FixMyStreet's names), and their
//! Open311 status.

use crate::reports::ReportStatus;

impl ReportStatus {
    /// The state's token: `open`, `confirmed`, `investigating`, `action_scheduled`,
    /// `in_progress`, `fixed`, `closed`, `duplicate` or `not_responsible`.
    pub fn token(self) -> &'static str {
        match self {
            ReportStatus::Unspecified => "unspecified",
            ReportStatus::Open => "open",
            ReportStatus::Confirmed => "confirmed",
            ReportStatus::Investigating => "investigating",
            ReportStatus::ActionScheduled => "action_scheduled",
            ReportStatus::InProgress => "in_progress",
            ReportStatus::Fixed => "fixed",
            ReportStatus::Closed => "closed",
            ReportStatus::Duplicate => "duplicate",
            ReportStatus::NotResponsible => "not_responsible",
        }
    }

    /// Whether the report still awaits action (Open311 `open`).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ReportStatus::Open
                | ReportStatus::Confirmed
                | ReportStatus::Investigating
                | ReportStatus::ActionScheduled
                | ReportStatus::InProgress
        )
    }

    /// The Open311 status: `open` or `closed`.
    pub fn open311(self) -> &'static str {
        if self.is_open() { "open" } else { "closed" }
    }
}
