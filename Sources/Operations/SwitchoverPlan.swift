import Foundation
import Spool
import StatusModel
import WALCore

/// The half of a planned switchover a site performs, chosen by what its server is: the primary's site demotes
/// (stops the primary cleanly, proves its last WAL reached the peer, restarts it as a standby of this site's
/// receiver), the standby's site promotes (proves from its spool that the primary stopped with nothing missing,
/// promotes, restores synchronous mode the other way).
public enum SwitchoverRole: String, Codable, Sendable {
    case demote, promote
}

/// The decisions of `walship switchover`, from facts alone.
public enum SwitchoverPlan {
    /// This site's sender as the primary sees it (its row in pg_stat_replication), with the primary's flush
    /// position; nil when the sender is not connected.
    public struct SenderRow: Sendable, Equatable {
        public var syncState: String
        /// What the peer's receiver made durable, as the sender reports it (flush_lsn).
        public var durable: LSN?
        /// What the peer's standby replayed, as the sender reports it (replay_lsn).
        public var replayed: LSN?

        public init(syncState: String, durable: LSN?, replayed: LSN?) {
            self.syncState = syncState
            self.durable = durable
            self.replayed = replayed
        }
    }

    public static func role(inRecovery: Bool) -> SwitchoverRole { inRecovery ? .promote : .demote }

    /// What must hold at the primary's site before its primary is stopped. `maxLag`: the most WAL the peer may
    /// lack now (it must then catch up during the write outage).
    public static func demoteChecks(
        sender: SenderRow?, flushed: LSN, applicationName: String, allowAsync: Bool, maxLag: UInt64
    ) -> [CheckResult] {
        guard let sender else {
            return [
                .fail(
                    "sender", "no walship send with application_name \(applicationName) streams from this primary",
                    hint:
                        "is walship send running beside it? --application-name must be the sender's (its [send] application-name)"
                )
            ]
        }
        var checks: [CheckResult] = []
        if sender.syncState == "sync" {
            checks.append(.ok("synchronous", "the primary waits for the peer site (sync_state sync)"))
        } else if allowAsync {
            checks.append(
                .warn(
                    "synchronous", "sync_state is \(sender.syncState): commits do not wait for the peer site (--allow-async)"
                ))
        } else {
            checks.append(
                .fail(
                    "synchronous", "sync_state is \(sender.syncState): commits do not wait for the peer site",
                    hint:
                        "set synchronous_standby_names to '\(applicationName)' and walship send --sync, or --allow-async: the switchover still loses nothing, it waits for the peer after the stop"
                ))
        }
        for (stage, position) in [("durable", sender.durable), ("replayed", sender.replayed)] {
            guard let position, position.isValid else {
                checks.append(
                    .fail(
                        "peer \(stage)", "the sender reports no \(stage) position at the peer site",
                        hint:
                            stage == "replayed"
                            ? "is the peer's standby connected to its walship receive --standby-listen?"
                            : "is the peer's walship receive acknowledging?"))
                continue
            }
            let behind = flushed.bytesAfter(position)
            checks.append(
                behind <= maxLag
                    ? .ok("peer \(stage)", "\(position), \(formatBytes(behind)) behind the primary's \(flushed)")
                    : .fail(
                        "peer \(stage)",
                        "\(position) is \(formatBytes(behind)) behind the primary's \(flushed), more than --max-lag \(formatBytes(maxLag))",
                        hint:
                            "wait until the peer catches up (walship status), or raise --max-lag: the write outage grows with it"
                    ))
        }
        return checks
    }

    /// What must hold at the standby's site before its standby is promoted. The spool must end with the
    /// shutdown checkpoint of the primary (`expected`, when the demoting site printed it): that is what proves
    /// the primary stopped and that every byte it wrote is here.
    public static func promoteChecks(replayPaused: Bool, tail: SpoolTail?, expected: LSN?) -> [CheckResult] {
        var checks: [CheckResult] = []
        checks.append(
            replayPaused
                ? .fail(
                    "replaying", "replay is paused on the standby", hint: "SELECT pg_wal_replay_resume() on it, then again")
                : .ok("replaying", "the standby replays"))
        guard let tail, let last = tail.lastRecord else {
            checks.append(
                .fail(
                    "primary stopped", "the spool holds no WAL of this system to prove it",
                    hint: "run walship switchover at the primary's site first"))
            return checks
        }
        guard tail.endsWithCleanShutdown else {
            checks.append(
                .fail(
                    "primary stopped",
                    "the spool ends at \(tail.end) on timeline \(tail.timeline), after a record at \(last.start) that is not a shutdown checkpoint: the primary has not stopped cleanly, or its last WAL has not arrived",
                    hint:
                        "run walship switchover at the primary's site first: it stops the primary and waits for its last WAL here; after a failure there, walship promote is the tool"
                ))
            return checks
        }
        if let expected, expected != last.start {
            checks.append(
                .fail(
                    "primary stopped",
                    "the spool's last shutdown checkpoint is at \(last.start), the primary's (--shutdown-checkpoint) at \(expected)",
                    hint: "the spool has not received the primary's last WAL: check the link and walship status"))
            return checks
        }
        checks.append(
            .ok(
                "primary stopped",
                "the spool ends at \(tail.end) on timeline \(tail.timeline) with the primary's shutdown checkpoint (\(last.start)): nothing it wrote is missing"
            ))
        return checks
    }

    /// `postgresql.auto.conf` lines that make a stopped primary a standby of this site's receiver.
    public static func standbySettings(primaryConninfo: String, restoreCommand: String, by command: String) -> [String] {
        [
            "# Written by \(command): a standby of the new primary, through this site's walship receive",
            "primary_conninfo = '\(escape(primaryConninfo))'",
            "restore_command = '\(escape(restoreCommand))'",
            "recovery_target_timeline = 'latest'",
        ]
    }

    /// The value of synchronous_standby_names that makes commits wait for the sender named `applicationName`.
    public static func synchronousStandbyNames(_ applicationName: String) -> String {
        "\"" + applicationName.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
