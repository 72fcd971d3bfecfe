//! JS handler routes: `/users/:id`, `/files/*`, matched segment by segment.

use http::Method;

enum Segment {
    Literal(String),
    Param(String),
    /// A trailing `*`: matches the rest (possibly nothing), captured as param `*`.
    Rest,
}

pub struct RoutePattern {
    method: Option<Method>,
    segments: Vec<Segment>,
}

impl RoutePattern {
    pub fn parse(method: Option<&str>, path: &str) -> Result<Self, String> {
        let method = method
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("route: bad method {m:?}"))
            })
            .transpose()?;
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "*" if index + 1 == parts.len() => Segment::Rest,
                "*" => return Err(format!("route: '*' must be the last segment of {path:?}")),
                param if param.starts_with(':') && param.len() > 1 => {
                    Segment::Param(param[1..].to_string())
                }
                literal => Segment::Literal(literal.to_string()),
            });
        }
        Ok(Self { method, segments })
    }

    /// Params (flat name, value) when `method` and `path` match.
    pub fn matches(&self, method: &Method, path: &str) -> Option<Vec<String>> {
        if let Some(expected) = &self.method {
            let head_for_get = *expected == Method::GET && method == Method::HEAD;
            if expected != method && !head_for_get {
                return None;
            }
        }
        let mut params = Vec::new();
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest => {
                    let rest: Vec<&str> = path
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .skip(index)
                        .collect();
                    params.push("*".to_string());
                    params.push(rest.join("/"));
                    return Some(params);
                }
                Segment::Literal(literal) => {
                    if parts.next()? != literal {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = parts.next()?;
                    params.push(name.clone());
                    params.push(
                        percent_encoding::percent_decode_str(value)
                            .decode_utf8_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        parts.next().is_none().then_some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_params_and_rest() {
        let users = RoutePattern::parse(Some("get"), "/users/:id").unwrap();
        assert_eq!(
            users.matches(&Method::GET, "/users/42"),
            Some(vec!["id".into(), "42".into()])
        );
        assert_eq!(
            users.matches(&Method::HEAD, "/users/a%20b"),
            Some(vec!["id".into(), "a b".into()])
        );
        assert_eq!(users.matches(&Method::POST, "/users/42"), None);
        assert_eq!(users.matches(&Method::GET, "/users/42/x"), None);
        assert_eq!(users.matches(&Method::GET, "/users"), None);
        let any = RoutePattern::parse(None, "/").unwrap();
        assert_eq!(any.matches(&Method::DELETE, "/"), Some(vec![]));
        let rest = RoutePattern::parse(None, "/static/*").unwrap();
        assert_eq!(
            rest.matches(&Method::GET, "/static/a/b"),
            Some(vec!["*".into(), "a/b".into()])
        );
        assert_eq!(
            rest.matches(&Method::GET, "/static"),
            Some(vec!["*".into(), "".into()])
        );
        assert!(RoutePattern::parse(None, "/*/x").is_err());
    }
}
