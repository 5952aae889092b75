//! `flatnet wait --converged [--timeout 60s]`: returns 0 once the cluster reflects the store as
//! it was when the command started (see `inspect::converge`).

use std::time::{Duration, Instant};

use store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// Wait until every node, agent, Deployment and pod has caught up with the store.
    #[arg(long, required = true)]
    converged: bool,
    /// How long to wait, e.g. 30s, 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30s, 2m, 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let _ = args.converged;
    let deadline = Instant::now() + args.timeout;
    let store = lab::client::connect(&lab).await?;
    let revision = store.revision().await?;
    loop {
        let pending = match inspect::converge::pending(&store).await {
            Ok(p) => p,
            Err(e) => vec![format!("store: {e}")],
        };
        if pending.is_empty() {
            println!("converged at revision {revision}");
            return Ok(0);
        }
        if Instant::now() > deadline {
            eprintln!("not converged after {:?}:", args.timeout);
            for p in pending {
                eprintln!("  {p}");
            }
            return Ok(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_kubectl() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "3x", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
