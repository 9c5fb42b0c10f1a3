//! `/proc/loadavg`: `0.52 0.58 0.59 1/234 5678`.

use super::{ParseError, parse_u64};

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// Runnable scheduling entities (tasks) right now.
    pub running_tasks: u64,
    /// All scheduling entities (tasks) that exist.
    pub total_tasks: u64,
}

pub fn parse(text: &str) -> Result<LoadAvg, ParseError> {
    let mut fields = text.split_ascii_whitespace();
    let mut average = |what: &str| -> Result<f64, ParseError> {
        let field = fields
            .next()
            .ok_or_else(|| ParseError::new(1, format!("missing {what}")))?;
        match field.parse::<f64>() {
            Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
            _ => Err(ParseError::new(
                1,
                format!("{what}: {field:?} is not a load average"),
            )),
        }
    };
    let one = average("1-minute average")?;
    let five = average("5-minute average")?;
    let fifteen = average("15-minute average")?;
    let tasks = fields
        .next()
        .ok_or_else(|| ParseError::new(1, "missing running/total tasks"))?;
    let (running, total) = tasks
        .split_once('/')
        .ok_or_else(|| ParseError::new(1, format!("tasks {tasks:?} is not running/total")))?;
    Ok(LoadAvg {
        one,
        five,
        fifteen,
        running_tasks: parse_u64(Some(running), 1, "running tasks")?,
        total_tasks: parse_u64(Some(total), 1, "total tasks")?,
    })
}
