//! ABOR during a transfer (RFC 959 §4.1.3): what the client hears, whatever the backend sent and
//! in whatever order.
//!
//! Servers differ: vsftpd answers the transfer (426) then ABOR (225); pure-ftpd 426 then a
//! multi-line 226; libunftp ABOR's 226 first and the transfer's 426 after it; some answer the
//! reset of the data connection before they read ABOR, some answer ABOR with nothing. The
//! session gathers what came (see `session::transfer`), and this decides the two replies the
//! client gets, in RFC 959's order: the transfer's (426 unless it had completed), then ABOR's
//! 2xx.

use super::Reply;

/// The client's two replies to an aborted transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Aborted {
    /// The transfer's final reply: 426, or its 2xx when it had completed.
    pub transfer: Reply,
    /// ABOR's own 2xx.
    pub abor: Reply,
    /// The transfer had completed before ABOR took effect.
    pub completed: bool,
}

/// `before`: the transfer's final reply, if it came before ABOR was sent. `after`: every final
/// reply the backend sent after ABOR. `copied_whole`: the data connections had closed cleanly.
pub(crate) fn settle(before: Option<&Reply>, after: &[Reply], copied_whole: bool) -> Aborted {
    let all: Vec<&Reply> = before.into_iter().chain(after).collect();
    let failed = all.iter().any(|r| r.code() >= 400);
    let completed = copied_whole && !failed && all.iter().any(|r| r.is_success());
    let abor_ok = || Reply::new(226, "ABOR command successful.");
    if completed {
        let mut oks = all.into_iter().filter(|r| r.is_success()).cloned();
        let transfer = oks
            .next()
            .unwrap_or_else(|| Reply::new(226, "Transfer complete."));
        return Aborted {
            transfer,
            abor: oks.next().unwrap_or_else(abor_ok),
            completed,
        };
    }
    // The backend's own code for the cut transfer varies (426, or pure-ftpd's 451 for an
    // upload); RFC 959 and clients expect 426.
    let transfer = Reply::transfer_aborted();
    let abor = after
        .iter()
        .rev()
        .find(|r| r.is_success())
        .cloned()
        .unwrap_or_else(abor_ok);
    Aborted {
        transfer,
        abor,
        completed,
    }
}

/// How many final replies the session waits for after ABOR before it falls back on a NOOP to
/// get back in step: the transfer's (unless `transfer_replied` already) and ABOR's.
pub(crate) fn expected(transfer_replied: bool) -> usize {
    if transfer_replied {
        1
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16, text: &str) -> Reply {
        Reply::new(code, text)
    }

    #[test]
    fn every_servers_order_gives_the_transfer_reply_then_abors() {
        let pure_226 = Reply::multi(226, "Transfer aborted", &[" (data)"], "ok");
        for (server, before, after, want_abor) in [
            (
                "vsftpd",
                None,
                vec![r(426, "Failure"), r(225, "ABOR ok")],
                225,
            ),
            (
                "pure-ftpd",
                None,
                vec![r(426, "ABORT"), pure_226.clone()],
                226,
            ),
            (
                "libunftp",
                None,
                vec![r(226, "ABOR ok"), r(426, "aborted")],
                226,
            ),
            (
                "reset first",
                Some(r(426, "reset")),
                vec![r(226, "ABOR")],
                226,
            ),
            ("silent", None, vec![], 226),
            (
                "pure-ftpd upload",
                None,
                vec![r(451, "aborted"), r(226, "ABOR")],
                226,
            ),
        ] {
            let out = settle(before.as_ref(), &after, false);
            assert_eq!(out.transfer.code(), 426, "{server}");
            assert_eq!(out.abor.code(), want_abor, "{server}");
            assert!(!out.completed, "{server}");
        }
        // pure-ftpd's multi-line 226 goes on whole.
        let out = settle(None, &[r(426, "ABORT"), pure_226.clone()], false);
        assert_eq!(out.abor, pure_226);
    }

    #[test]
    fn a_transfer_that_had_completed_keeps_its_2xx() {
        let out = settle(Some(&r(226, "done")), &[r(225, "no transfer")], true);
        assert!(out.completed);
        assert_eq!((out.transfer.code(), out.abor.code()), (226, 225));
        // Complete on the backend, but the client's data connection failed: 426.
        let out = settle(Some(&r(226, "done")), &[r(225, "no transfer")], false);
        assert_eq!((out.transfer.code(), out.abor.code()), (426, 225));
        // The copy ended cleanly and the backend answered only once: both still come.
        let out = settle(None, &[r(226, "done")], true);
        assert_eq!((out.transfer.code(), out.abor.code()), (226, 226));
        assert_eq!(expected(false), 2);
        assert_eq!(expected(true), 1);
    }
}
