//! Property tests of the command state machine and the path checks: no line makes it panic,
//! every valid address is taken as written, and a path broken anywhere is refused.

use proptest::prelude::*;

use super::{config, TestBackend};
use crate::smtp::command::{Commands, Next};

/// Runs `lines` through a fresh state machine and returns each reply code and the envelope
/// handed to DATA, if one was.
fn dialog(lines: &[Vec<u8>]) -> (Vec<u16>, Option<(String, Vec<String>)>) {
    let backend = TestBackend::default();
    let config = config();
    let mut commands = Commands::default();
    let mut codes = Vec::new();
    let mut envelope = None;
    for line in lines {
        let step = commands.handle(line, &backend, &config);
        codes.push(step.reply.code);
        if let Next::Data(e) = step.next {
            envelope = Some((e.sender, e.recipients));
        }
    }
    (codes, envelope)
}

fn line(text: &str) -> Vec<u8> {
    format!("{text}\r\n").into_bytes()
}

/// A dot-atom local part and an LDH domain under `example.test`, as RFC 5321 §4.1.2 writes them.
fn address() -> impl Strategy<Value = String> {
    let atom = "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}";
    let local = prop::collection::vec(atom, 1..4).prop_map(|atoms| atoms.join("."));
    let label = "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?";
    let domain = prop::collection::vec(label, 0..3).prop_map(|labels| {
        let mut d = labels;
        d.push("example".into());
        d.push("test".into());
        d.join(".")
    });
    (local, domain).prop_map(|(l, d)| format!("{l}@{d}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_command_line_panics_and_every_reply_is_a_reply(
        lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..8),
        verbs in prop::collection::vec(prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "EHLO ", "DATA", ""]), 1..8),
    ) {
        let lines: Vec<Vec<u8>> = lines
            .into_iter()
            .zip(verbs)
            .map(|(mut bytes, verb)| {
                bytes.retain(|&b| b != b'\n');
                [verb.as_bytes(), &bytes, b"\r\n"].concat()
            })
            .collect();
        let (codes, _) = dialog(&lines);
        prop_assert!(codes.iter().all(|c| (200..600).contains(c)), "{:?}", codes);
    }

    #[test]
    fn valid_addresses_are_taken_as_written(sender in address(), rcpt in address()) {
        // The test backend takes recipients of example.test only.
        let rcpt = format!("{}@example.test", rcpt.rsplit_once('@').expect("an @").0);
        let (codes, envelope) = dialog(&[
            line("EHLO client.test"),
            line(&format!("MAIL FROM:<{sender}>")),
            line(&format!("RCPT TO:<{rcpt}>")),
            line("DATA"),
        ]);
        prop_assert_eq!(codes, vec![250, 250, 250, 354]);
        prop_assert_eq!(envelope, Some((sender, vec![rcpt])));
    }

    #[test]
    fn a_path_broken_anywhere_is_refused(
        address in address(),
        at in any::<prop::sample::Index>(),
        bad in prop::sample::select(vec![" ", "\t", "\x01", "\x7f", "<", "@@", ".."]),
        mail in any::<bool>(),
    ) {
        let cut = at.index(address.len() + 1);
        let broken = format!("{}{bad}{}", &address[..cut], &address[cut..]);
        let command = if mail { "MAIL FROM:" } else { "RCPT TO:" };
        let mut lines = vec![line("EHLO client.test")];
        if !mail {
            lines.push(line("MAIL FROM:<>"));
        }
        lines.push(line(&format!("{command}<{broken}>")));
        let (codes, _) = dialog(&lines);
        let last = *codes.last().expect("a reply");
        prop_assert!(last == 501 || last == 553, "{} {:?} got {}", command, broken, last);
    }
}
