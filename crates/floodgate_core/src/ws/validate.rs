//! Messages checked in Rust before JS hears them (`messages` on a WebSocket route): a message
//! must be one JSON value within the route's bounds on its shape (nesting, members per object,
//! string length) and, with a `schema`, valid under that JSON Schema (the `jsonschema` crate,
//! compiled once per route). A message that is not never reaches JS: it is dropped and
//! counted (`ws_invalid_message`), and the socket is closed with 1007 at the first one
//! (`onInvalid: 'close'`) or after `maxInvalid` of them. Telemetry routes check each message of
//! a batch the same way, since messages are checked one by one before they are batched.

use crate::config::{MessageFormat, MessagesConfig};
use serde_json::Value;

/// serde_json's own nesting limit: deeper input is refused by the parser.
const PARSER_DEPTH: u32 = 128;

/// One route's rules, compiled.
pub struct MessageRules {
    max_depth: u32,
    max_keys: usize,
    /// 0: no cap.
    max_string_length: usize,
    schema: Option<jsonschema::Validator>,
}

/// Why a message was refused (tests and logs; JS never sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    NotJson,
    TooDeep,
    TooManyKeys,
    StringTooLong,
    Schema,
}

impl MessageRules {
    /// Compiles `config`; the error names the option (`messages.schema: ...`).
    pub fn new(config: &MessagesConfig) -> Result<Self, String> {
        let MessageFormat::Json = config.format;
        if config.max_depth == 0 || config.max_depth > PARSER_DEPTH {
            return Err(format!(
                "ws: messages.maxDepth must be between 1 and {PARSER_DEPTH}"
            ));
        }
        if config.max_keys == 0 {
            return Err("ws: messages.maxKeys must be at least 1".into());
        }
        let schema = match &config.schema {
            Some(schema) => Some(
                jsonschema::validator_for(schema)
                    .map_err(|err| format!("ws: messages.schema: {err}"))?,
            ),
            None => None,
        };
        Ok(Self {
            max_depth: config.max_depth,
            max_keys: config.max_keys as usize,
            max_string_length: config.max_string_length as usize,
            schema,
        })
    }

    /// Checks one message's bytes (text, or binary holding UTF-8 JSON).
    pub fn check(&self, data: &[u8]) -> Result<(), Invalid> {
        let value: Value = serde_json::from_slice(data).map_err(|_| Invalid::NotJson)?;
        self.check_shape(&value, 0)?;
        match &self.schema {
            Some(schema) if !schema.is_valid(&value) => Err(Invalid::Schema),
            _ => Ok(()),
        }
    }

    fn check_shape(&self, value: &Value, depth: u32) -> Result<(), Invalid> {
        match value {
            Value::Array(items) => {
                if depth + 1 > self.max_depth {
                    return Err(Invalid::TooDeep);
                }
                items
                    .iter()
                    .try_for_each(|item| self.check_shape(item, depth + 1))
            }
            Value::Object(members) => {
                if depth + 1 > self.max_depth {
                    return Err(Invalid::TooDeep);
                }
                if members.len() > self.max_keys {
                    return Err(Invalid::TooManyKeys);
                }
                members.iter().try_for_each(|(key, member)| {
                    self.check_string(key)?;
                    self.check_shape(member, depth + 1)
                })
            }
            Value::String(text) => self.check_string(text),
            _ => Ok(()),
        }
    }

    fn check_string(&self, text: &str) -> Result<(), Invalid> {
        // Bytes bound characters from above: count characters only when the bytes exceed.
        if self.max_string_length > 0
            && text.len() > self.max_string_length
            && text.chars().count() > self.max_string_length
        {
            return Err(Invalid::StringTooLong);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(config: serde_json::Value) -> Result<MessageRules, String> {
        MessageRules::new(&serde_json::from_value(config).unwrap())
    }

    #[test]
    fn shape_bounds_and_schema() {
        let rules = rules(json!({
            "maxDepth": 3, "maxKeys": 2, "maxStringLength": 5,
            "schema": { "type": "object", "required": ["type"], "properties": { "type": { "enum": ["chat", "ping"] } } }
        }))
        .unwrap();
        assert_eq!(rules.check(br#"{"type":"chat"}"#), Ok(()));
        assert_eq!(rules.check(br#"{"type":"chat","x":[[1]]}"#), Ok(()));
        assert_eq!(rules.check(b"{"), Err(Invalid::NotJson));
        assert_eq!(rules.check(b"\xff"), Err(Invalid::NotJson));
        assert_eq!(
            rules.check(br#"{"type":"chat","x":[[[1]]]}"#),
            Err(Invalid::TooDeep)
        );
        assert_eq!(
            rules.check(br#"{"type":"chat","a":1,"b":2}"#),
            Err(Invalid::TooManyKeys)
        );
        assert_eq!(
            rules.check(br#"{"type":"chat","x":"toolong"}"#),
            Err(Invalid::StringTooLong)
        );
        assert_eq!(
            rules.check("{\"type\":\"chat\",\"x\":\"ééééé\"}".as_bytes()),
            Ok(())
        );
        assert_eq!(rules.check(br#"{"type":"other"}"#), Err(Invalid::Schema));
        assert_eq!(rules.check(br#"[1]"#), Err(Invalid::Schema));
    }

    #[test]
    fn bad_rules_name_the_option() {
        let error = rules(json!({ "schema": { "type": "no such type" } }))
            .err()
            .unwrap();
        assert!(error.starts_with("ws: messages.schema:"), "{error}");
        let error = rules(json!({ "maxDepth": 500 })).err().unwrap();
        assert!(error.contains("messages.maxDepth"), "{error}");
    }
}
