//! Request extractors whose rejections are [`ApiError`]s, so a bad path
//! parameter (invalid UTF-8 included) or a bad JSON body answers the
//! contract's JSON error like every other failure (docs/protocol.md "HTTP"). Handlers use
//! these instead of axum's own `Path` and `Json`.

use axum::extract::{FromRequest, FromRequestParts};

use crate::error::ApiError;

/// axum's `Path`, rejecting with [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// axum's `Json` request body, rejecting with [`ApiError`] (responses keep
/// using `axum::Json`).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);
