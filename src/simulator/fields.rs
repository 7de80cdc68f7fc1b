//! A request's fields (query string, form or JSON body) as name/value pairs, in the order sent.

/// The fields of one request.
pub type Fields = [(String, String)];

/// The first value of field `name`, if sent.
pub fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
