//! `/proc/self/mountinfo`: what is mounted where (proc(5)).

use super::{ParseError, parse_u64};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

pub fn parse(text: &str) -> Result<Vec<Mount>, ParseError> {
    let mut mounts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        // id parent major:minor root mount_point options [optional...] - fstype source super_options
        let (left, right) = line
            .split_once(" - ")
            .ok_or_else(|| ParseError::new(number, "missing \" - \" separator"))?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 6 || right.len() < 2 {
            return Err(ParseError::new(number, "too few fields"));
        }
        let (major, minor) = left[2]
            .split_once(':')
            .ok_or_else(|| ParseError::new(number, format!("bad device {:?}", left[2])))?;
        let device_number = |text: &str, what: &str| -> Result<u32, ParseError> {
            u32::try_from(parse_u64(Some(text), number, what)?)
                .map_err(|_| ParseError::new(number, format!("{what} out of range")))
        };
        mounts.push(Mount {
            major: device_number(major, "major")?,
            minor: device_number(minor, "minor")?,
            mount_point: unescape(left[4]),
            fs_type: right[0].to_owned(),
            source: unescape(right[1]),
            super_options: right.get(2).copied().unwrap_or_default().to_owned(),
        });
    }
    Ok(mounts)
}

/// The kernel escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[at], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                at += 4;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_and_keeps_stray_backslashes() {
        assert_eq!(unescape(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape(r"/odd\9"), r"/odd\9");
        assert_eq!(unescape(r"trailing\"), r"trailing\");
    }
}
