//! `/proc/net/dev`: per interface receive and transmit counters.

use super::{ParseError, parse_u64};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDevStat {
    pub interface: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

pub fn parse(text: &str) -> Result<Vec<NetDevStat>, ParseError> {
    let mut interfaces = Vec::new();
    // Two header lines, then "  name: 16 counters" (no space after ':' when numbers are wide).
    for (index, line) in text.lines().enumerate().skip(2) {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (name, counters) = line
            .split_once(':')
            .ok_or_else(|| ParseError::new(number, "expected \"interface: counters\""))?;
        let values = counters
            .split_ascii_whitespace()
            .map(|field| parse_u64(Some(field), number, "counter"))
            .collect::<Result<Vec<u64>, _>>()?;
        if values.len() < 16 {
            return Err(ParseError::new(
                number,
                format!("expected 16 counters, found {}", values.len()),
            ));
        }
        interfaces.push(NetDevStat {
            interface: name.trim().to_owned(),
            rx_bytes: values[0],
            rx_packets: values[1],
            rx_errors: values[2],
            rx_dropped: values[3],
            tx_bytes: values[8],
            tx_packets: values[9],
            tx_errors: values[10],
            tx_dropped: values[11],
        });
    }
    Ok(interfaces)
}
