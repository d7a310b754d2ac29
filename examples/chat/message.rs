//! What one chat message carries on the wire, and the checks every message passes before it is
//! sent, shown or forwarded.
//!
//! A message is `[version = 1][nick length][nick][text]`, all UTF-8. Who sent it is not in
//! here: gossipsub signs every message with the author's node key, and the signed source peer
//! id is what identifies a member. The nick is only a label the author chose.
//!
//! The text comes from other people and ends up on someone's terminal, so control characters
//! (escape sequences, newlines, carriage returns) and bidirectional-override characters are
//! refused: a received line can neither rewrite the screen nor pretend to be two lines.

use std::fmt;

/// Longest nick, in bytes.
pub(crate) const MAX_NICK: usize = 32;
/// Longest text of one message, in bytes.
pub(crate) const MAX_TEXT: usize = 1024;
/// Longest encoded message.
pub(crate) const MAX_ENCODED: usize = 2 + MAX_NICK + MAX_TEXT;

const VERSION: u8 = 1;

/// One chat line: who says it (a self-chosen label) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatMessage {
    /// The author's nick.
    pub(crate) nick: String,
    /// What they said.
    pub(crate) text: String,
}

/// Why a message or a nick is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Invalid {}

/// Characters that reorder text on screen (Unicode bidi controls): refused like control
/// characters.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A nick is 1 to [`MAX_NICK`] bytes of printable characters, without spaces or `<`, `>` (so
/// `<nick> text` reads one way only).
pub(crate) fn check_nick(nick: &str) -> Result<(), Invalid> {
    if nick.is_empty() {
        return Err(Invalid("empty nick"));
    }
    if nick.len() > MAX_NICK {
        return Err(Invalid("nick longer than 32 bytes"));
    }
    if nick
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || is_bidi_control(c) || c == '<' || c == '>')
    {
        return Err(Invalid(
            "nick with a space, a control character, '<' or '>'",
        ));
    }
    Ok(())
}

/// A text is 1 to [`MAX_TEXT`] bytes without control or bidi-override characters.
pub(crate) fn check_text(text: &str) -> Result<(), Invalid> {
    if text.is_empty() {
        return Err(Invalid("empty text"));
    }
    if text.len() > MAX_TEXT {
        return Err(Invalid("text longer than 1024 bytes"));
    }
    if text.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(Invalid("text with a control character"));
    }
    Ok(())
}

impl ChatMessage {
    /// A message, checked.
    pub(crate) fn new(nick: &str, text: &str) -> Result<Self, Invalid> {
        check_nick(nick)?;
        check_text(text)?;
        Ok(ChatMessage {
            nick: nick.to_owned(),
            text: text.to_owned(),
        })
    }

    /// The bytes to publish.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.nick.len() + self.text.len());
        out.push(VERSION);
        // `new` and `decode` bound the nick to MAX_NICK (< 256) bytes.
        out.push(u8::try_from(self.nick.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.nick.as_bytes());
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    /// Parses and checks received bytes; anything else is [`Invalid`].
    pub(crate) fn decode(data: &[u8]) -> Result<Self, Invalid> {
        if data.len() > MAX_ENCODED {
            return Err(Invalid("message too long"));
        }
        let [version, nick_len, rest @ ..] = data else {
            return Err(Invalid("message too short"));
        };
        if *version != VERSION {
            return Err(Invalid("unknown message version"));
        }
        let nick_len = usize::from(*nick_len);
        if nick_len > rest.len() {
            return Err(Invalid("nick length past the end"));
        }
        let (nick, text) = rest.split_at(nick_len);
        let nick = std::str::from_utf8(nick).map_err(|_| Invalid("nick is not UTF-8"))?;
        let text = std::str::from_utf8(text).map_err(|_| Invalid("text is not UTF-8"))?;
        ChatMessage::new(nick, text)
    }
}

impl fmt::Display for ChatMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}> {}", self.nick, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip() -> Result<(), Invalid> {
        let m = ChatMessage::new("alice", "héllo, wörld")?;
        assert_eq!(ChatMessage::decode(&m.encode())?, m);
        assert_eq!(m.to_string(), "<alice> héllo, wörld");
        Ok(())
    }

    #[test]
    fn hostile_or_broken_bytes_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b"\x01",
            b"\x02\x01ahi",                      // unknown version
            b"\x01\x09abc",                      // nick length past the end
            b"\x01\x00hi",                       // empty nick
            b"\x01\x01a",                        // empty text
            b"\x01\x01a\x1b[2Jhi",               // escape sequence
            b"\x01\x01ahi\nfake",                // a second line
            b"\x01\x02a>hi",                     // '>' in the nick
            b"\x01\x01a\xff\xfe",                // not UTF-8
            "\x01\x01a\u{202E}olleh".as_bytes(), // bidi override
        ];
        for data in bad {
            assert!(ChatMessage::decode(data).is_err(), "accepted {data:?}");
        }
        let long = [&[1u8, 1, b'a'][..], &[b'x'; MAX_TEXT + 1]].concat();
        assert!(ChatMessage::decode(&long).is_err());
        let longest = [&[1u8, 1, b'a'][..], &[b'x'; MAX_TEXT]].concat();
        assert!(ChatMessage::decode(&longest).is_ok());
    }
}
