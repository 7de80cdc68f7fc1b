//! GitLab's offset pagination of list endpoints: `page` (from 1) and `per_page` (20 unless
//! asked, at most 100), and the `X-Page`, `X-Per-Page`, `X-Next-Page` (empty on the last page)
//! and `X-Total` headers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::fields::{Fields, field};
use super::gitlab_api::json_response;

/// Items per page when the request names none.
const DEFAULT_PER_PAGE: usize = 20;
/// The most items per page GitLab gives, whatever is asked.
const MAX_PER_PAGE: usize = 100;

/// The page of `items` the request's `page` and `per_page` fields ask for, with GitLab's headers.
pub fn page_of(items: Vec<Value>, fields: &Fields) -> Response {
    let number = |name: &str| field(fields, name).and_then(|value| value.parse::<usize>().ok()).filter(|&n| n > 0);
    let per_page = number("per_page").unwrap_or(DEFAULT_PER_PAGE).min(MAX_PER_PAGE);
    let page = number("page").unwrap_or(1);
    let total = items.len();
    let shown: Vec<Value> = items.into_iter().skip((page - 1).saturating_mul(per_page)).take(per_page).collect();
    let next = if page.saturating_mul(per_page) < total { (page + 1).to_string() } else { String::new() };
    let headers = [
        ("x-page", page.to_string()),
        ("x-per-page", per_page.to_string()),
        ("x-next-page", next),
        ("x-total", total.to_string()),
    ];
    (headers, json_response(StatusCode::OK, Value::Array(shown))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn header(response: &Response, name: &str) -> String {
        response.headers()[name].to_str().unwrap().to_owned()
    }

    #[test]
    fn pages_are_twenty_unless_asked_at_most_a_hundred_and_name_the_next_one() {
        let items = || (0..130).map(Value::from).collect::<Vec<_>>();
        let first = page_of(items(), &fields(&[]));
        assert_eq!((header(&first, "x-per-page"), header(&first, "x-next-page")), ("20".into(), "2".into()));
        let asked = page_of(items(), &fields(&[("per_page", "500"), ("page", "2")]));
        assert_eq!((header(&asked, "x-per-page"), header(&asked, "x-next-page")), ("100".into(), String::new()));
        assert_eq!(header(&asked, "x-total"), "130");
    }
}
