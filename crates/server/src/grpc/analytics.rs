//! `AnalyticsService`: cells with small ones suppressed.

use projections::analytics::Granularity;
use proto::api as pb;
use tonic::Request;

use super::{Handle, Reply, credentials};

#[tonic::async_trait]
impl pb::analytics_service_server::AnalyticsService for Handle {
    async fn query_analytics(&self, request: Request<pb::QueryAnalyticsRequest>) -> Reply<pb::QueryAnalyticsResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let granularity = match pb::Granularity::try_from(r.granularity) {
            Ok(pb::Granularity::Hour) => Some(Granularity::Hour),
            Ok(pb::Granularity::Day) => Some(Granularity::Day),
            _ => None,
        };
        self.unary("QueryAnalytics", async {
            let a = self.app.query_analytics(&who, &r.pype_id, granularity, r.from_micros, r.to_micros).await?;
            let mean = |sum: u64, n: u64| if n == 0 { 0.0 } else { sum as f64 / n as f64 / 1e6 };
            Ok(pb::QueryAnalyticsResponse {
                cells: a
                    .cells
                    .into_iter()
                    .map(|c| match c.cell {
                        None => pb::AnalyticsCell {
                            bucket_start_micros: c.bucket_start_micros,
                            suppressed: true,
                            ..Default::default()
                        },
                        Some(x) => pb::AnalyticsCell {
                            bucket_start_micros: c.bucket_start_micros,
                            suppressed: false,
                            sessions: x.sessions,
                            started: x.started,
                            closed_by_api: x.closed_by_api,
                            closed_by_timer: x.closed_by_timer,
                            mean_first_response_secs: mean(x.first_response_micros_sum, x.first_response_count),
                            first_responses: x.first_response_count,
                            mean_handle_secs: mean(x.handle_micros_sum, x.handle_count),
                            messages_end_user: x.messages_end_user,
                            messages_agent: x.messages_agent,
                            messages_bot: x.messages_bot,
                            inactive_periods: x.inactive_periods,
                        },
                    })
                    .collect(),
                k: a.k,
            })
        })
        .await
    }
}
