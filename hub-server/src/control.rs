//! The stand-in's own routes, outside the Hub's protocol: its counters, and the faults and
//! clock of the real-Hub profile, for tests and benchmarks that run the server as a process.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use serde::Deserialize;

use crate::error::HubError;
use crate::faults::FaultPlan;
use crate::{HubStats, Shared};

pub(crate) async fn stats(State(st): State<Arc<Shared>>) -> Json<HubStats> {
    Json(st.stats.snapshot())
}

/// `PUT /_stand-in/faults/{hub|cdn}` with a [`FaultPlan`]: replaces that listener's faults.
pub(crate) async fn set_faults(
    State(st): State<Arc<Shared>>,
    UrlPath(listener): UrlPath<String>,
    Json(plan): Json<FaultPlan>,
) -> Result<Json<FaultPlan>, HubError> {
    let hf = st
        .hf
        .as_ref()
        .ok_or_else(|| HubError::BadRequest("faults need the real-Hub profile".into()))?;
    plan.validate().map_err(HubError::BadRequest)?;
    let faults = match listener.as_str() {
        "hub" => &hf.hub_faults,
        "cdn" => &hf.cdn_faults,
        other => {
            return Err(HubError::BadRequest(format!(
                "no listener {other:?}: hub or cdn"
            )))
        }
    };
    faults.set(plan.clone());
    Ok(Json(plan))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Advance {
    advance_secs: f64,
}

/// `POST /_stand-in/clock?advance_secs=N`: moves the server's clock forward.
pub(crate) async fn advance_clock(
    State(st): State<Arc<Shared>>,
    Query(q): Query<Advance>,
) -> Result<Json<serde_json::Value>, HubError> {
    if !(q.advance_secs.is_finite() && q.advance_secs >= 0.0) {
        return Err(HubError::BadRequest(
            "advance_secs must be a non-negative number".into(),
        ));
    }
    st.clock.advance(Duration::from_secs_f64(q.advance_secs));
    Ok(Json(
        serde_json::json!({ "unix_secs": st.clock.unix_secs() }),
    ))
}
