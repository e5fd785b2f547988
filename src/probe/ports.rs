//! What the ports of the passive replies say: one port for every transfer (the layout
//! docs/operations.md recommends for ftpsgate: one port to open and forward) or a range, every
//! port of which a firewall or NAT router on the way must let through.

use super::{Level, Probe};

/// How many distinct ports the line lists before it says "...".
const LISTED: usize = 8;

/// The line for the ports the PASV and EPSV replies named, in the order they came; nothing
/// without a reply.
fn verdict(ports: &[u16]) -> Option<String> {
    let first = *ports.first()?;
    let mut distinct: Vec<u16> = Vec::new();
    for &p in ports {
        if !distinct.contains(&p) {
            distinct.push(p);
        }
    }
    let replies = ports.len();
    Some(match distinct.len() {
        1 if replies == 1 => {
            format!("the one passive reply named port {first}: too few to tell one port from a range")
        }
        1 => format!(
            "every passive reply named port {first} ({replies} replies): one port for every transfer, as recommended; it is the only data port to open and forward"
        ),
        n => {
            let mut list: Vec<String> = distinct.iter().take(LISTED).map(u16::to_string).collect();
            if n > LISTED {
                list.push("...".into());
            }
            format!(
                "the {replies} passive replies named {n} ports ({}): a range, every port of which must be open and forwarded (ftpsgate needs one: passive.ports = \"{first}\")",
                list.join(", ")
            )
        }
    })
}

impl Probe<'_> {
    /// Notes the port a PASV or EPSV reply named.
    pub(super) fn named(&mut self, port: u16) {
        self.ports.push(port);
    }

    /// The line on the ports named, after every step that asks for one.
    pub(super) fn passive_ports(&mut self) {
        if let Some(detail) = verdict(&self.ports) {
            self.say(Level::Ok, "passive ports", detail, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_port_in_every_reply_is_a_one_port_server() {
        let line = verdict(&[50000; 5]).expect("a line");
        assert!(
            line.starts_with("every passive reply named port 50000 (5 replies): one port for every transfer, as recommended"),
            "{line}"
        );
    }

    #[test]
    fn several_ports_are_listed_once_each_in_order() {
        let line = verdict(&[41007, 41002, 41007, 41009]).expect("a line");
        assert!(
            line.starts_with("the 4 passive replies named 3 ports (41007, 41002, 41009): a range"),
            "{line}"
        );
        let many: Vec<u16> = (50000..50020).collect();
        let line = verdict(&many).expect("a line");
        assert!(
            line.contains(
                "named 20 ports (50000, 50001, 50002, 50003, 50004, 50005, 50006, 50007, ...)"
            ),
            "{line}"
        );
    }

    #[test]
    fn one_reply_or_none_tells_nothing() {
        assert_eq!(verdict(&[]), None);
        let line = verdict(&[50000]).expect("a line");
        assert!(line.contains("too few to tell"), "{line}");
    }
}
