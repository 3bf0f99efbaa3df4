//! `strata alert create NAME --pattern P --threshold N --window 60s [--below]
//! [--where /field=value]... [--to TOPIC] [--cooldown 5m] [--group-by SEL]`,
//! and `strata alert list | describe NAME | delete NAME`.

use std::time::Duration;

use clap::Subcommand;

use super::{connect, status_error, ClientArgs, Format};
use crate::cli::time::format_ms;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// A rule: at least --threshold matching records within --window
    /// publish an alert record to --to (with --below: fewer than
    /// --threshold in a full window, e.g. "payments stopped").
    Create {
        /// Rule name (also the alert records' key).
        name: String,
        /// Topic or glob pattern (`*.error`); topics created later match too.
        #[arg(long)]
        pattern: String,
        #[arg(long)]
        threshold: u64,
        /// The window, e.g. 60s, 5m.
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Duration,
        /// Fire when fewer than --threshold arrived in a full window.
        #[arg(long)]
        below: bool,
        /// Only records whose JSON field (a JSON pointer) or header:NAME
        /// equals VALUE (JSON, or a bare word as a string); repeatable.
        #[arg(long = "where", value_name = "SELECTOR=VALUE", value_parser = super::topic::parse_pair)]
        filter: Vec<(String, String)>,
        /// The alert topic [default: alerts.NAME].
        #[arg(long)]
        to: Option<String>,
        /// No second alert within this long [default: the window].
        #[arg(long, value_parser = humantime::parse_duration)]
        cooldown: Option<Duration>,
        /// One window per value of this JSON pointer or header:NAME.
        #[arg(long)]
        group_by: Option<String>,
    },
    /// Every rule, with its count in the window now and when it last fired.
    List,
    /// One rule in full.
    Describe { name: String },
    /// Delete a rule (its alert topic stays).
    Delete { name: String },
}

pub async fn run(command: AlertCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(args).await?;
    match command {
        AlertCommand::Create { name, pattern, threshold, window, below, filter, to, cooldown, group_by } => {
            let condition = if below { proto::AlertCondition::Below } else { proto::AlertCondition::AtLeast };
            let request = proto::CreateAlertRuleRequest {
                name,
                topic_pattern: pattern,
                filter: filter.into_iter().collect(),
                threshold,
                window_ms: window.as_millis() as u64,
                alert_topic: to.unwrap_or_default(),
                cooldown_ms: cooldown.map(|c| c.as_millis() as u64),
                condition: condition as i32,
                group_by: group_by.unwrap_or_default(),
            };
            let d = client.create_alert_rule(request).await.map_err(status_error)?.into_inner();
            match args.format {
                Format::Json => println!("{}", json(&d)),
                Format::Text => {
                    let r = d.rule.as_ref().expect("a description carries its rule");
                    println!("created alert rule {}: {}; alerts go to {}", r.name, summary(r), r.alert_topic);
                }
            }
        }
        AlertCommand::List => {
            let rules = client
                .list_alert_rules(proto::ListAlertRulesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .rules;
            match args.format {
                Format::Json => println!("{}", serde_json::Value::Array(rules.iter().map(json).collect())),
                Format::Text => {
                    println!("{:<24} {:<44} {:>9} {:>7}  LAST-FIRED", "RULE", "CONDITION", "IN-WINDOW", "FIRED");
                    for d in &rules {
                        let r = d.rule.as_ref().expect("rule");
                        let last = d.last_fired_ms.map_or("-".to_string(), format_ms);
                        println!(
                            "{:<24} {:<44} {:>9} {:>7}  {last}",
                            r.name,
                            summary(r),
                            d.current_count,
                            d.fired_total
                        );
                    }
                }
            }
        }
        AlertCommand::Describe { name } => {
            let d = client
                .describe_alert_rule(proto::DescribeAlertRuleRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            match args.format {
                Format::Json => println!("{}", json(&d)),
                Format::Text => {
                    let r = d.rule.as_ref().expect("rule");
                    println!("alert rule {}", r.name);
                    println!("  when         {}", summary(r));
                    for (k, v) in &r.filter {
                        println!("  where        {k} = {v}");
                    }
                    if !r.group_by.is_empty() {
                        println!("  group by     {}", r.group_by);
                    }
                    println!("  alert topic  {}", r.alert_topic);
                    println!("  cooldown     {} ms", r.cooldown_ms.unwrap_or(r.window_ms));
                    println!("  in window    {}", d.current_count);
                    println!("  fired        {} (since the broker started)", d.fired_total);
                    println!("  last fired   {}", d.last_fired_ms.map_or("never".to_string(), format_ms));
                }
            }
        }
        AlertCommand::Delete { name } => {
            client
                .delete_alert_rule(proto::DeleteAlertRuleRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            if args.format == Format::Text {
                println!("deleted alert rule {name}");
            }
        }
    }
    Ok(())
}

/// `>= 5 in 60000 ms on *.error`, as people read a rule.
fn summary(r: &proto::CreateAlertRuleRequest) -> String {
    let op = if r.condition == proto::AlertCondition::Below as i32 { "<" } else { ">=" };
    format!("{op} {} in {} ms on {}", r.threshold, r.window_ms, r.topic_pattern)
}

fn json(d: &proto::AlertRuleDescription) -> serde_json::Value {
    let r = d.rule.as_ref().expect("rule");
    serde_json::json!({
        "name": r.name, "topic_pattern": r.topic_pattern, "filter": r.filter, "threshold": r.threshold,
        "window_ms": r.window_ms, "alert_topic": r.alert_topic, "cooldown_ms": r.cooldown_ms,
        "condition": if r.condition == proto::AlertCondition::Below as i32 { "BELOW" } else { "AT_LEAST" },
        "group_by": r.group_by, "last_fired_ms": d.last_fired_ms, "fired_total": d.fired_total,
        "current_count": d.current_count,
    })
}
