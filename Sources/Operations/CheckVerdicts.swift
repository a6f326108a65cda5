import Foundation
import PGReplication
import Sender
import ShipTLS
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// The verdicts of `walship check`, one function per check, from facts gathered elsewhere: no I/O here,
/// so each line the command prints can be tested without a server, a receiver or a disk.
public enum CheckVerdicts {
    // MARK: Configuration

    /// The command to check: `--role`, else the one table the file has.
    public enum RoleChoice: Equatable {
        case role(String)
        case refused(CheckResult)
    }

    public static func role(explicit: String?, filePath: String?, fileRoles: [String]) -> RoleChoice {
        if let explicit { return .role(explicit) }
        if let filePath, fileRoles.count > 1 {
            return .refused(
                .fail(
                    "configuration", "\(filePath) configures \(fileRoles.joined(separator: " and "))",
                    hint: "pass --role to say which this host runs"))
        }
        if filePath != nil, fileRoles.count == 1, let only = fileRoles.first { return .role(only) }
        return .refused(
            .fail(
                "configuration", "nothing says which command to check",
                hint: "pass --config FILE with a [send] or [receive] table, or --role"))
    }

    public static func configurationUnusable(_ error: any Error) -> CheckResult { .fail("configuration", "\(error)") }

    /// The options of `command` parsed: `source` is the file's path, or "the environment".
    public static func configurationParsed(source: String, command: String, optionCount: Int) -> CheckResult {
        .ok("configuration", "\(source) gives walship \(command) \(optionCount) options")
    }

    /// The options did not parse: the parser's message, on one line.
    public static func configurationInvalid(_ message: String) -> CheckResult {
        .fail(
            "configuration",
            message.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "\n", with: "; "))
    }

    // MARK: Certificates

    public static func certificates(_ finding: TLSFinding) -> CheckResult {
        switch finding.level {
        case .ok: .ok("certificates", finding.text)
        case .warning: .warn("certificates", finding.text)
        case .failure: .fail("certificates", finding.text)
        }
    }

    public static func certificatesUnusable(_ error: any Error) -> CheckResult { .fail("certificates", "\(error)") }

    public static let plaintext = CheckResult.warn("certificates", "none; the link runs in plaintext (insecure = true)")

    // MARK: Source and slot

    public static func sourceInvalid(_ error: any Error) -> CheckResult { .fail("source", "\(error)") }

    public static func source(conninfo: String, serverVersion: Int, systemIdentifier: UInt64, timeline: UInt32) -> CheckResult {
        let version = "\(serverVersion / 10000).\(serverVersion % 10000)"
        guard serverVersion / 10000 == 15 else {
            return .fail("source", "\(conninfo) runs PostgreSQL \(version); walship supports PostgreSQL 15")
        }
        return .ok(
            "source",
            "\(conninfo) reachable as a replication connection (PostgreSQL \(version), system \(systemIdentifier), timeline \(timeline))"
        )
    }

    public static func sourceUnreachable(conninfo: String, _ error: any Error) -> CheckResult {
        .fail(
            "source", "\(conninfo) unreachable: \(error)",
            hint:
                "check that PostgreSQL runs and is reachable with this conninfo, that the role has REPLICATION, and that pg_hba.conf has a 'replication' line for it"
        )
    }

    /// What READ_REPLICATION_SLOT found.
    public enum SlotState: Equatable {
        case present(restartLSN: LSN?)
        case absent
    }

    public static func slot(_ name: String, _ state: SlotState, createSlot: Bool) -> CheckResult {
        switch state {
        case .present(let restartLSN):
            return .ok(
                "slot", "physical slot \"\(name)\" present (restart_lsn \(restartLSN.map { "\($0)" } ?? "not reserved yet"))")
        case .absent where createSlot:
            return .ok("slot", "\"\(name)\" does not exist yet; walship send creates it (create-slot = true)")
        case .absent:
            return .fail(
                "slot", "\"\(name)\" does not exist on the primary",
                hint: "set create-slot = true, or run SELECT pg_create_physical_replication_slot('\(name)', true);")
        }
    }

    public static func slotUnreadable(_ error: any Error) -> CheckResult { .fail("slot", "\(error)") }

    // MARK: Clocks and synchronous commit

    /// `offset` is the peer's clock minus this host's, in seconds; `roundTrip` bounds how exactly it is known.
    public static func clock(peer: String, offset: Double, roundTrip: Double? = nil, maxSkew: Double) -> CheckResult {
        let ms = Int((offset * 1000).rounded())
        let precision = roundTrip.map { String(format: " ±%.0f ms", $0 * 500) } ?? ""
        let text = "\(peer) is \(abs(ms)) ms \(ms >= 0 ? "ahead of" : "behind") this host\(precision)"
        guard abs(offset) > maxSkew else { return .ok("clock", text) }
        return .warn("clock", text, hint: "lag and alert times assume synchronized clocks; run NTP/chrony on both hosts")
    }

    public static let primaryGaveNoTime = CheckResult.warn("clock", "the primary returned no time")

    public static func clockNotMeasured(_ error: any Error) -> CheckResult {
        .warn(
            "clock", "skew to the primary not measured: no SQL connection (\(error))",
            hint:
                "the check needs a database the role may connect to: add dbname=… to source, or a pg_hba.conf line for it")
    }

    /// Whether the primary's commits will wait for this sender, against what `sync` says they should do.
    /// `syncState` is the running sender's `pg_stat_replication.sync_state` (nil while none streams);
    /// `synchronousCommit` the primary's default. With sync = true, anything that lets commits return without
    /// the DR site is a failure: the configuration promises what the primary does not do.
    public static func synchronous(
        standbyNames names: String, applicationName: String, sync: Bool, syncState: String? = nil,
        synchronousCommit: String? = nil
    ) -> CheckResult {
        let named = SynchronousStandbyNames.includes(names, name: applicationName)
        let shown = names.isEmpty ? "empty" : "'\(names)'"
        if sync, let commit = synchronousCommit, commit == "local" || commit == "off" {
            return .fail(
                "synchronous",
                "sync = true, but the primary's synchronous_commit is \(commit): commits do not wait for the DR site",
                hint: "ALTER SYSTEM SET synchronous_commit = on; SELECT pg_reload_conf();")
        }
        switch (sync, named) {
        case (true, true):
            if let state = syncState, state != "sync" {
                return .fail(
                    "synchronous",
                    "sync = true and synchronous_standby_names (\(shown)) names \"\(applicationName)\", but the primary treats the running sender as \(state): a commit may return before the DR site has it",
                    hint:
                        "name \(applicationName) first in synchronous_standby_names (e.g. '\(applicationName)' or 'FIRST 1 (\(applicationName), …)'); quorum (ANY) and potential do not promise the DR site"
                )
            }
            return .ok(
                "synchronous",
                "synchronous_standby_names (\(shown)) names \"\(applicationName)\": commits wait until their WAL is fsynced at the DR site"
                    + (syncState == nil ? "" : " (sync_state sync)")
            )
        case (true, false):
            return .fail(
                "synchronous",
                "sync = true, but synchronous_standby_names (\(shown)) does not name \"\(applicationName)\": commits will not wait for the DR site",
                hint:
                    "once walship send streams, ALTER SYSTEM SET synchronous_standby_names = '\(applicationName)'; SELECT pg_reload_conf(); — set it before, and commits wait for a standby that is not there yet"
            )
        case (false, true):
            return .warn(
                "synchronous",
                "synchronous_standby_names (\(shown)) names \"\(applicationName)\", but sync = false: commits wait for the DR site, while the receiver batches fsyncs as for an asynchronous sender",
                hint: "set sync = true")
        case (false, false):
            return .ok(
                "synchronous",
                "asynchronous shipping; synchronous_standby_names (\(shown)) does not name \"\(applicationName)\"")
        }
    }

    /// Whether the sender's role can read `pg_stat_replication.sync_state` (pg_monitor or pg_read_all_stats):
    /// without it the mode reads as unknown and the mode history proves nothing.
    public static func monitorRole(user: String, canRead: Bool) -> CheckResult {
        canRead
            ? .ok("pg_monitor", "role \(user) can read how the primary treats the sender (pg_stat_replication.sync_state)")
            : .fail(
                "pg_monitor",
                "role \(user) is not a member of pg_monitor or pg_read_all_stats: the sender cannot read pg_stat_replication.sync_state, so the mode history would say unknown and no promotion report could prove RPO 0",
                hint: "GRANT pg_monitor TO \(user);")
    }

    // MARK: Receiver, from the sender's side

    public static func receiverNotTried(_ to: String) -> CheckResult {
        .fail("receiver", "\(to) not tried: the TLS files cannot be loaded (see above)")
    }

    public static func receiverAnswered(
        _ to: String, overTLS: Bool, receiverName: String, resumeLSN: LSN, resumeTimeline: TimeLineID
    ) -> CheckResult {
        let resume =
            resumeLSN.isValid ? "resumes at \(resumeLSN) on timeline \(resumeTimeline)" : "holds no WAL of this system yet"
        return .ok(
            "receiver",
            "\(to) answered the handshake\(overTLS ? " over mutual TLS" : " (plaintext)") (receiver \(receiverName); its spool \(resume))"
        )
    }

    public static func receiverFailed(_ to: String, stage: ReceiverProbeError.Stage?, _ error: any Error) -> CheckResult {
        let hint: String? =
            switch stage {
            case .connect?: "is walship receive running there, and does a firewall let this host reach the port?"
            case .tls?:
                "tls-ca must be the CA that signed the receiver's certificate, which must name the host in to (or set tls-server-name), and the receiver must trust the CA of tls-cert"
            case .refused?, .handshake?, nil: nil
            }
        return .fail("receiver", "\(to): \(error)", hint: hint)
    }

    /// Without the source's system identifier no hello can be sent: only whether the port opens.
    public static func receiverPort(_ to: String, connectError: String?) -> CheckResult {
        if let connectError { return .fail("receiver", "\(to) unreachable: \(connectError)") }
        return .warn("receiver", "\(to) accepts connections; the handshake was not tried without the source's system identifier")
    }

    // MARK: Receiver's own host

    /// What trying the spool directory found.
    public enum SpoolState: Equatable {
        /// Not there: `parent` is its nearest existing ancestor, where walship receive would create it.
        case missing(parent: String, parentWritable: Bool)
        case notDirectory
        case cannotCreateFile(reason: String)
        case writeFailed(reason: String)
        case writable(systems: [UInt64], freePercent: Double?)
    }

    public static func spool(_ root: String, _ state: SpoolState) -> CheckResult {
        switch state {
        case .missing(let parent, true):
            return .ok("spool", "\(root) does not exist yet; walship receive creates it (in \(parent), writable)")
        case .missing(let parent, false):
            return .fail(
                "spool", "\(root) does not exist and \(parent) is not writable for this user",
                hint: "install -d -o postgres -g postgres -m 0750 \(root)")
        case .notDirectory:
            return .fail("spool", "\(root) is not a directory")
        case .cannotCreateFile(let reason):
            return .fail(
                "spool", "\(root) is not writable for this user: \(reason)",
                hint: "the receiver runs as the postgres OS user: chown -R postgres:postgres \(root)")
        case .writeFailed(let reason):
            return .fail("spool", "writing to \(root) failed: \(reason)")
        case .writable(let systems, let freePercent):
            let free = freePercent.map { String(format: ", %.0f%% free", $0) } ?? ""
            let held = systems.isEmpty ? "no system yet" : "systems \(systems.map(String.init).joined(separator: ", "))"
            return .ok("spool", "\(root) is writable and fsyncs (\(held)\(free))")
        }
    }

    /// `bindError` is nil when the address could be bound, else the errno; `runningPID` is the pid of a
    /// walship receive whose status endpoint (at `statusListen`) answers.
    public static func listen(
        option: String, address: String, port: Int, bindError: Int32?, runningPID: Int32?, statusListen: String?
    ) -> CheckResult {
        switch bindError {
        case nil:
            return .ok(option, "\(address) is free to bind")
        case EADDRINUSE?:
            if let runningPID {
                return .ok(
                    option,
                    "\(address) is in use by the running walship receive (pid \(runningPID)), whose status endpoint answers at \(statusListen ?? "")"
                )
            }
            return .fail(
                option, "\(address) is in use, and no walship receive answers at status-listen to claim it",
                hint: "ss -ltnp 'sport = :\(port)' shows which program holds it")
        case let code?:
            let hint: String? =
                code == EADDRNOTAVAIL
                ? "the address is not one of this host's" : code == EACCES ? "ports below 1024 need privileges" : nil
            return .fail(option, "cannot bind \(address): \(String(cString: strerror(code)))", hint: hint)
        }
    }

    public static let standbyTrusted = CheckResult.ok(
        "standby credential", "none (standby-trust on a loopback standby-listen)")

    /// A credential file that loads: what it holds (`text`), and whether others may read it (`mode`).
    public static func standbyCredential(file: String, text: String, mode: Int?) -> [CheckResult] {
        let kind =
            text.hasPrefix("SCRAM-SHA-256$")
            ? "a SCRAM-SHA-256 verifier" : "a password (a SCRAM-SHA-256 verifier keeps the password off this host)"
        var results = [CheckResult.ok("standby credential", "\(file) holds \(kind)")]
        if let mode, mode & 0o007 != 0 {
            results.append(
                .warn(
                    "standby credential", "\(file) is readable by every user (mode \(String(mode, radix: 8)))",
                    hint: "chmod 0600 \(file)"))
        }
        return results
    }

    public static func standbyCredentialUnusable(_ error: any Error) -> CheckResult { .fail("standby credential", "\(error)") }
}
