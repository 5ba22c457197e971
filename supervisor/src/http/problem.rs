//! How a [`Problem`] goes out: `application/problem+json`, its status, and `retry-after` for
//! quota refusals.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

pub use crate::service::problem::Problem;

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        r.content_type("application/problem+json");
        if let Some(s) = self.retry_after {
            r.insert_header(("retry-after", s.to_string()));
        }
        r.json(self)
    }
}
