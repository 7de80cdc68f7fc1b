//! The overview's expiry timeline: a server-rendered SVG with one lane per state, each token
//! drawn where its secret expires, coloured by its state (a tooltip names it). Beyond
//! [`MAX_DOTS`] tokens the lanes show how many expire in each stretch of time instead.

use chrono::{DateTime, TimeDelta, Utc};
use maud::{Markup, html};

use crate::domain::TokenState;
use crate::store::overview::ExpiryPoint;

/// Most tokens drawn one by one.
pub const MAX_DOTS: usize = 400;
const WIDTH: f64 = 960.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 20.0;
const LANE: f64 = 22.0;
const TOP: f64 = 10.0;
const BUCKETS: usize = 96;

/// The lanes, top to bottom.
const LANES: [TokenState; 6] = [
    TokenState::NeedsAttention,
    TokenState::Expired,
    TokenState::Retrying,
    TokenState::Rotating,
    TokenState::Paused,
    TokenState::Active,
];

/// A state's colour (the stylesheet's, as SVG cannot read CSS variables in every viewer).
fn colour(state: TokenState) -> &'static str {
    match state {
        TokenState::Active => "#1f7a3a",
        TokenState::Retrying | TokenState::Rotating => "#a15c00",
        TokenState::NeedsAttention | TokenState::Expired => "#b3261e",
        TokenState::Paused => "#5b6574",
    }
}

/// The time axis: from a day ago to the latest expiry (at least a week, at most 400 days ahead).
struct Axis {
    start: DateTime<Utc>,
    span: f64,
}

impl Axis {
    fn new(points: &[ExpiryPoint], now: DateTime<Utc>) -> Self {
        let latest = points.iter().filter_map(|p| p.expires_at).max().unwrap_or(now);
        let end = latest.clamp(now + TimeDelta::days(7), now + TimeDelta::days(400));
        let start = now - TimeDelta::days(1);
        Self { start, span: (end - start).num_seconds().max(1) as f64 }
    }

    /// The x of `at`, clamped to the drawing.
    fn x(&self, at: DateTime<Utc>) -> f64 {
        let fraction = ((at - self.start).num_seconds() as f64 / self.span).clamp(0.0, 1.0);
        LEFT + fraction * (WIDTH - LEFT - RIGHT)
    }

    fn at(&self, fraction: f64) -> DateTime<Utc> {
        self.start + TimeDelta::seconds((self.span * fraction) as i64)
    }
}

/// The SVG for `points` as of `now`.
pub fn render(points: &[ExpiryPoint], now: DateTime<Utc>) -> Markup {
    let axis = Axis::new(points, now);
    let height = TOP + LANE * LANES.len() as f64 + 30.0;
    let dated: Vec<&ExpiryPoint> = points.iter().filter(|p| p.expires_at.is_some()).collect();
    let undated = points.len() - dated.len();
    let lane_y =
        |state: TokenState| TOP + LANE * LANES.iter().position(|s| *s == state).unwrap_or(0) as f64 + LANE / 2.0;
    let now_x = axis.x(now);
    html! {
        svg.timeline viewBox=(format!("0 0 {WIDTH} {height}")) role="img" xmlns="http://www.w3.org/2000/svg"
            aria-label=(format!("Expiry timeline of {} tokens", points.len())) {
            @for state in LANES {
                text x="4" y=(lane_y(state) + 4.0) font-size="12" fill="#5b6574" { (state.as_str()) }
                line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(lane_y(state)) y2=(lane_y(state)) stroke="#d8dde5" {}
            }
            line x1=(now_x) x2=(now_x) y1=(TOP - 4.0) y2=(TOP + LANE * LANES.len() as f64) stroke="#2f5fb3" stroke-dasharray="4 3" {}
            @for tick in 0..=4 {
                @let fraction = f64::from(tick) / 4.0;
                text x=(LEFT + fraction * (WIDTH - LEFT - RIGHT)) y=(height - 8.0) font-size="11" fill="#5b6574"
                    text-anchor=(if tick == 0 { "start" } else if tick == 4 { "end" } else { "middle" }) {
                    (axis.at(fraction).format("%Y-%m-%d"))
                }
            }
            text x=(now_x + 3.0) y=(TOP + 2.0) font-size="11" fill="#2f5fb3" { "now" }
            @if dated.len() <= MAX_DOTS {
                @for point in &dated {
                    circle cx=(format!("{:.1}", axis.x(point.expires_at.unwrap_or(now)))) cy=(lane_y(point.state)) r="5"
                        fill=(colour(point.state)) fill-opacity="0.8" {
                        title { (point.name) " — " (point.state.as_str()) ", expires " (point.expires_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()) }
                    }
                }
            } @else {
                @for (state, bucket, count) in buckets(&dated, &axis) {
                    @let x = LEFT + bucket as f64 * (WIDTH - LEFT - RIGHT) / BUCKETS as f64;
                    rect x=(format!("{x:.1}")) y=(lane_y(state) - 7.0) width=(format!("{:.1}", (WIDTH - LEFT - RIGHT) / BUCKETS as f64))
                        height="14" fill=(colour(state)) fill-opacity=(format!("{:.2}", (0.25 + (count as f64).ln_1p() / 8.0).min(1.0))) {
                        title { (count) " " (state.as_str()) " token(s) expiring around " (axis.at((bucket as f64 + 0.5) / BUCKETS as f64).format("%Y-%m-%d")) }
                    }
                }
            }
            @if undated > 0 {
                text x=(WIDTH - RIGHT) y=(TOP + 2.0) font-size="11" fill="#5b6574" text-anchor="end" { (undated) " without a known expiry" }
            }
        }
    }
}

/// Non-empty (state, bucket, count) cells, for many tokens.
fn buckets(points: &[&ExpiryPoint], axis: &Axis) -> Vec<(TokenState, usize, usize)> {
    let mut counts = vec![[0usize; LANES.len()]; BUCKETS];
    for point in points {
        let Some(at) = point.expires_at else { continue };
        let fraction = (axis.x(at) - LEFT) / (WIDTH - LEFT - RIGHT);
        let bucket = ((fraction * BUCKETS as f64) as usize).min(BUCKETS - 1);
        if let Some(lane) = LANES.iter().position(|s| *s == point.state) {
            counts[bucket][lane] += 1;
        }
    }
    let mut cells = Vec::new();
    for (bucket, lanes) in counts.iter().enumerate() {
        for (lane, &count) in lanes.iter().enumerate() {
            if count > 0 {
                cells.push((LANES[lane], bucket, count));
            }
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str, state: TokenState, days: i64, now: DateTime<Utc>) -> ExpiryPoint {
        ExpiryPoint { name: name.into(), state, expires_at: Some(now + TimeDelta::days(days)) }
    }

    #[test]
    fn each_token_is_a_dot_in_its_states_lane_named_in_its_tooltip() {
        let now = Utc::now();
        let svg = render(
            &[point("a<b", TokenState::Active, 10, now), point("late", TokenState::NeedsAttention, -2, now)],
            now,
        )
        .into_string();
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("a&lt;b — active") && svg.contains("late — needs_attention"), "{svg}");
        assert!(svg.contains("#b3261e") && svg.contains("#1f7a3a"));
    }

    #[test]
    fn many_tokens_are_counted_per_stretch_instead_of_drawn_one_by_one() {
        let now = Utc::now();
        let points: Vec<_> = (0..1000).map(|i| point(&format!("t{i}"), TokenState::Active, i % 30, now)).collect();
        let svg = render(&points, now).into_string();
        assert_eq!(svg.matches("<circle").count(), 0);
        let counted: usize =
            buckets(&points.iter().collect::<Vec<_>>(), &Axis::new(&points, now)).iter().map(|c| c.2).sum();
        assert_eq!(counted, 1000);
        assert!(svg.len() < 60_000, "the SVG stays small: {} bytes", svg.len());
    }
}
