import Foundation
import Logging
import PGReplication
import Spool
import StatusModel
import WALCore

/// The steps `walship promote` and `walship drill` share: wait for replay, promote, wait for the first
/// accepted write, and read back what was replayed.
struct PromotionSteps {
    let session: SQLSession
    let report: (String) -> Void

    struct ReplayState {
        var inRecovery: Bool
        var replayed: LSN
        var received: LSN
        var lastCommit: Date?
    }

    func replayState() async throws -> ReplayState {
        let row = try await session.query(
            """
            SELECT pg_is_in_recovery()::text, pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text,
                   (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint::text
            """)[0]
        return ReplayState(
            inRecovery: row[0] == "true", replayed: row[1].flatMap { LSN($0) } ?? .invalid,
            received: row[2].flatMap { LSN($0) } ?? .invalid,
            lastCommit: row[3].flatMap { Double($0) }.map { Date(timeIntervalSince1970: $0 / 1_000_000) })
    }

    /// Waits until replay reaches `target()` (re-read each round: the spool may still grow) or `deadline`.
    /// Returns the last state; the caller decides what a shortfall means.
    func waitForReplay(target: () async throws -> LSN, deadline: ContinuousClock.Instant) async throws -> (ReplayState, LSN) {
        var lastNote = ContinuousClock.now
        while true {
            let goal = try await target()
            let state = try await replayState()
            if !state.inRecovery || state.replayed >= goal || ContinuousClock.now >= deadline { return (state, goal) }
            if ContinuousClock.now - lastNote >= .seconds(5) {
                report(
                    "  waiting: replayed \(state.replayed), the spool holds up to \(goal) (\(formatBytes(goal.bytesAfter(state.replayed))) to go)"
                )
                lastNote = .now
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// pg_promote, then retries a real write (an assigned transaction ID, committed) until one is accepted.
    /// A promoted replica has no synchronous standby of its own: synchronous_standby_names inherited from
    /// the old primary would make every commit wait forever, so it is cleared (and recorded).
    func promote(
        deadline: ContinuousClock.Instant, evidence: inout PromotionReport
    ) async throws -> (timeline: UInt32?, firstWriteAt: Date) {
        // Our own probe never waits for a synchronous standby.
        _ = try await session.query("SET synchronous_commit TO local")
        let seconds = max(1, Int((deadline - .now).components.seconds))
        let promoted = try await session.query("SELECT pg_promote(true, $1::int)::text", [String(seconds)])
        guard promoted.first?[0] == "true" else {
            throw PromoteError("pg_promote did not finish within \(seconds) s (hint: check the server log)")
        }
        var firstWriteAt: Date
        while true {
            do {
                // Assigning a transaction ID and committing it is a real write, refused until recovery has ended.
                _ = try await session.query("SELECT pg_current_xact_id()")
                firstWriteAt = Date()
                break
            } catch let error as PostgresError where !error.connectionLost && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let names = try await session.query("SELECT current_setting('synchronous_standby_names')").first?[0] ?? ""
        if !names.isEmpty {
            do {
                _ = try await session.query("ALTER SYSTEM SET synchronous_standby_names = ''")
                _ = try await session.query("SELECT pg_reload_conf()")
                evidence.check(
                    "synchronous_standby_names cleared", true,
                    "was '\(names)', inherited from the old primary; commits would wait forever for a standby that is gone (ALTER SYSTEM; set it again once a new standby runs)"
                )
                report("  cleared synchronous_standby_names (was '\(names)'): the promoted server has no synchronous standby yet")
            } catch let error as PostgresError where !error.connectionLost {
                // Promoted all the same: a role that may run pg_promote need not be allowed ALTER SYSTEM.
                evidence.check(
                    "synchronous_standby_names cleared", false,
                    "is '\(names)', inherited from the old primary, and could not be cleared (\(error)): commits on the promoted server wait forever for a standby that is gone until a superuser runs ALTER SYSTEM SET synchronous_standby_names = ''; SELECT pg_reload_conf()"
                )
                report(
                    "  warning: could not clear synchronous_standby_names ('\(names)'): \(error); commits wait until a superuser runs ALTER SYSTEM SET synchronous_standby_names = ''; SELECT pg_reload_conf()"
                )
            }
        }
        let tli = try await session.query("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        return (tli.first?[0].flatMap { UInt32($0, radix: 16) }, firstWriteAt)
    }
}

extension PromotionSteps {
    /// The history file of `timeline` as the promoted server wrote it: through `pg_read_file` (superuser or
    /// pg_read_server_files), else from the data directory's `pg_wal` (readable when run as root or its owner).
    /// Without a data directory here, TIMELINE_HISTORY on a replication connection of `standby` stands in for it.
    func historyFile(of timeline: UInt32, dataDirectory: String?, standby: String?) async throws -> String {
        let name = historyFileName(timeline: timeline)
        if let text = try? await session.query("SELECT pg_read_file($1)", ["pg_wal/" + name]).first?[0] {
            return text
        }
        guard let dataDirectory else {
            do {
                let replication = ReplicationSession(
                    conninfo: try Conninfo(standby ?? ""), logger: Logger(label: "walship.promote"))
                defer { Task { await replication.close() } }
                _ = try await replication.connect(applicationName: "walship_promote")
                let file = try await replication.timelineHistory(timeline)
                return String(decoding: file.content, as: UTF8.self)
            } catch {
                throw PromoteError(
                    "cannot read \(name): pg_read_file was refused and TIMELINE_HISTORY on a replication connection failed (\(error)) (hint: promote as a superuser, or GRANT EXECUTE ON FUNCTION pg_read_file(text) to the role, or give it REPLICATION and a replication line in the standby's pg_hba.conf)"
                )
            }
        }
        let path = dataDirectory + "/pg_wal/" + name
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PromoteError(
                "cannot read \(name): pg_read_file was refused and \(path) is not readable (hint: run walship promote as root or as the data directory's owner)"
            )
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Where to write a report when `--report` is not given.
func defaultReportBase(kind: String, directory: String, at date: Date = Date()) -> String {
    directory + "/walship-\(kind)-\(compactTimestamp(date))"
}

/// `20261207T173614`: a UTC time for file names.
func compactTimestamp(_ date: Date) -> String {
    String(formatISO8601(date).replacingOccurrences(of: ":", with: "").replacingOccurrences(of: "-", with: "").prefix(15))
}

/// Fills the report's acknowledgement and primary figures from what the receiver recorded in the spool.
func recordPrimaryProgress(into evidence: inout PromotionReport, systemDirectory: String) {
    guard let progress = try? PrimaryProgressRecord.load(systemDirectory: systemDirectory) else { return }
    evidence.lastAcknowledgedLSN = progress.acknowledgedLSN
    evidence.lastAcknowledgedAt = progress.acknowledgedAt
    evidence.primaryLastKnownLSN = progress.primaryLSN
    evidence.primaryLastKnownAt = progress.primaryTime
}
