import Foundation
import Sender
import Testing
import WALCore

@testable import Operations

#if canImport(Glibc)
import Glibc
#endif

/// Each line `walship check` prints, from the facts behind it: users' scripts read these lines.
@Suite struct CheckVerdictTests {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    @Test func linesKeepTheirColumnsAndFoldToOneLine() {
        #expect(CheckResult.ok("spool", "fine").line == "ok    spool: fine")
        #expect(CheckResult.warn("clock", "off", hint: "run NTP").line == "WARN  clock: off (hint: run NTP)")
        #expect(CheckResult.fail("source", "refused:\n  FATAL: no\n").line == "FAIL  source: refused: FATAL: no")
    }

    @Test func reportCountsFailuresAndEmitsEachResultAsAdded() {
        var emitted: [String] = []
        var report = CheckReport { emitted.append($0.line) }
        report.add(.ok("a", "1"))
        report.add(.fail("b", "2"))
        report.add(.warn("c", "3"))
        #expect(emitted == ["ok    a: 1", "FAIL  b: 2", "WARN  c: 3"])
        #expect(report.failures == 1)
    }

    @Test func strictFailsOnAWarningToo() {
        var report = CheckReport { _ in }
        report.add(.ok("a", "1"))
        report.add(.warn("clock", "off"))
        #expect(!report.failed(strict: false))
        #expect(report.failed(strict: true))
        report.add(.fail("b", "2"))
        #expect(report.failed(strict: false))
    }

    @Test func roleComesFromTheFlagOrTheOnlyTable() {
        #expect(
            CheckVerdicts.role(explicit: "receive", filePath: "/e/w.toml", fileRoles: ["send", "receive"]) == .role("receive"))
        #expect(CheckVerdicts.role(explicit: nil, filePath: "/e/w.toml", fileRoles: ["send"]) == .role("send"))
        guard case .refused(let two) = CheckVerdicts.role(explicit: nil, filePath: "/e/w.toml", fileRoles: ["send", "receive"])
        else {
            Issue.record("two tables without --role must be refused")
            return
        }
        #expect(
            two.line
                == "FAIL  configuration: /e/w.toml configures send and receive (hint: pass --role to say which this host runs)")
        guard case .refused(let none) = CheckVerdicts.role(explicit: nil, filePath: nil, fileRoles: []) else {
            Issue.record("no file and no --role must be refused")
            return
        }
        #expect(
            none.line
                == "FAIL  configuration: nothing says which command to check (hint: pass --config FILE with a [send] or [receive] table, or --role)"
        )
    }

    @Test func configurationLines() {
        #expect(
            CheckVerdicts.configurationParsed(source: "/etc/walship/walship.toml", command: "send", optionCount: 7).line
                == "ok    configuration: /etc/walship/walship.toml gives walship send 7 options")
        #expect(
            CheckVerdicts.configurationInvalid("Error: missing --to\nUsage: walship send\n").line
                == "FAIL  configuration: Error: missing --to; Usage: walship send")
        #expect(CheckVerdicts.configurationUnusable(Failure(description: "bad TOML")).line == "FAIL  configuration: bad TOML")
    }

    @Test func sourceNeedsPostgreSQL15() {
        #expect(
            CheckVerdicts.source(conninfo: "host=p", serverVersion: 150_004, systemIdentifier: 7, timeline: 2).line
                == "ok    source: host=p reachable as a replication connection (PostgreSQL 15.4, system 7, timeline 2)")
        #expect(
            CheckVerdicts.source(conninfo: "host=p", serverVersion: 160_001, systemIdentifier: 7, timeline: 2).line
                == "FAIL  source: host=p runs PostgreSQL 16.1; walship supports PostgreSQL 15")
        #expect(
            CheckVerdicts.sourceUnreachable(conninfo: "host=p", Failure(description: "timeout")).line
                == "FAIL  source: host=p unreachable: timeout (hint: check that PostgreSQL runs and is reachable with this conninfo, that the role has REPLICATION, and that pg_hba.conf has a 'replication' line for it)"
        )
    }

    @Test func slotPresentMissingOrToBeCreated() {
        #expect(
            CheckVerdicts.slot("walship", .present(restartLSN: LSN(0x1_0000_0028)), createSlot: false).line
                == "ok    slot: physical slot \"walship\" present (restart_lsn 1/28)")
        #expect(
            CheckVerdicts.slot("walship", .present(restartLSN: nil), createSlot: false).line
                == "ok    slot: physical slot \"walship\" present (restart_lsn not reserved yet)")
        #expect(
            CheckVerdicts.slot("walship", .absent, createSlot: true).line
                == "ok    slot: \"walship\" does not exist yet; walship send creates it (create-slot = true)")
        #expect(
            CheckVerdicts.slot("walship", .absent, createSlot: false).line
                == "FAIL  slot: \"walship\" does not exist on the primary (hint: set create-slot = true, or run SELECT pg_create_physical_replication_slot('walship', true);)"
        )
    }

    @Test func clockWarnsOnlyBeyondTheAllowedSkew() {
        #expect(
            CheckVerdicts.clock(peer: "the primary", offset: 0.012, maxSkew: 5).line
                == "ok    clock: the primary is 12 ms ahead of this host")
        #expect(
            CheckVerdicts.clock(peer: "the receiver", offset: -0.5, roundTrip: 0.004, maxSkew: 5).line
                == "ok    clock: the receiver is 500 ms behind this host ±2 ms")
        #expect(
            CheckVerdicts.clock(peer: "the primary", offset: 6, maxSkew: 5).line
                == "WARN  clock: the primary is 6000 ms ahead of this host (hint: lag and alert times assume synchronized clocks; run NTP/chrony on both hosts)"
        )
        #expect(
            CheckVerdicts.clockNotMeasured(Failure(description: "no pg_hba.conf entry")).line
                == "WARN  clock: skew to the primary not measured: no SQL connection (no pg_hba.conf entry) (hint: the check needs a database the role may connect to: add dbname=… to source, or a pg_hba.conf line for it)"
        )
        #expect(CheckVerdicts.primaryGaveNoTime.line == "WARN  clock: the primary returned no time")
    }

    @Test func synchronousMatchesSync() {
        #expect(
            CheckVerdicts.synchronous(standbyNames: "walship", applicationName: "walship", sync: true).line
                == "ok    synchronous: synchronous_standby_names ('walship') names \"walship\": commits wait until their WAL is fsynced at the DR site"
        )
        #expect(
            CheckVerdicts.synchronous(standbyNames: "", applicationName: "walship", sync: true).line
                == "FAIL  synchronous: sync = true, but synchronous_standby_names (empty) does not name \"walship\": commits will not wait for the DR site (hint: once walship send streams, ALTER SYSTEM SET synchronous_standby_names = 'walship'; SELECT pg_reload_conf(); — set it before, and commits wait for a standby that is not there yet)"
        )
        // What the primary does with a running sender outranks what its settings seem to say.
        #expect(
            CheckVerdicts.synchronous(
                standbyNames: "ANY 1 (walship, other)", applicationName: "walship", sync: true, syncState: "quorum"
            )
            .line.hasPrefix(
                "FAIL  synchronous: sync = true and synchronous_standby_names ('ANY 1 (walship, other)') names \"walship\", but the primary treats the running sender as quorum"
            ))
        #expect(
            CheckVerdicts.synchronous(standbyNames: "walship", applicationName: "walship", sync: true, syncState: "sync").line
                .hasSuffix("fsynced at the DR site (sync_state sync)"))
        #expect(
            CheckVerdicts.synchronous(
                standbyNames: "walship", applicationName: "walship", sync: true, syncState: "sync", synchronousCommit: "local"
            ).line.hasPrefix("FAIL  synchronous: sync = true, but the primary's synchronous_commit is local"))
        #expect(
            CheckVerdicts.synchronous(standbyNames: "", applicationName: "walship", sync: false, synchronousCommit: "off")
                .line.hasPrefix("ok    synchronous: asynchronous shipping"))
        #expect(
            CheckVerdicts.synchronous(standbyNames: "FIRST 1 (walship)", applicationName: "walship", sync: false).line
                == "WARN  synchronous: synchronous_standby_names ('FIRST 1 (walship)') names \"walship\", but sync = false: commits wait for the DR site, while the receiver batches fsyncs as for an asynchronous sender (hint: set sync = true)"
        )
        #expect(
            CheckVerdicts.synchronous(standbyNames: "other", applicationName: "walship", sync: false).line
                == "ok    synchronous: asynchronous shipping; synchronous_standby_names ('other') does not name \"walship\"")
    }

    @Test func theSendersRoleMustReadSyncState() {
        #expect(
            CheckVerdicts.monitorRole(user: "walship", canRead: true).line
                == "ok    pg_monitor: role walship can read how the primary treats the sender (pg_stat_replication.sync_state)")
        let missing = CheckVerdicts.monitorRole(user: "walship", canRead: false).line
        #expect(missing.hasPrefix("FAIL  pg_monitor: role walship is not a member of pg_monitor or pg_read_all_stats"))
        #expect(missing.hasSuffix("(hint: GRANT pg_monitor TO walship;)"))
    }

    @Test func receiverLines() {
        #expect(
            CheckVerdicts.receiverAnswered(
                "dr:7000", overTLS: true, receiverName: "dr1", resumeLSN: LSN(0x3_0000_0000), resumeTimeline: 2
            ).line
                == "ok    receiver: dr:7000 answered the handshake over mutual TLS (receiver dr1; its spool resumes at 3/0 on timeline 2)"
        )
        #expect(
            CheckVerdicts.receiverAnswered("dr:7000", overTLS: false, receiverName: "dr1", resumeLSN: .invalid, resumeTimeline: 1)
                .line
                == "ok    receiver: dr:7000 answered the handshake (plaintext) (receiver dr1; its spool holds no WAL of this system yet)"
        )
        #expect(
            CheckVerdicts.receiverFailed("dr:7000", stage: .connect, Failure(description: "connection refused")).line
                == "FAIL  receiver: dr:7000: connection refused (hint: is walship receive running there, and does a firewall let this host reach the port?)"
        )
        #expect(
            CheckVerdicts.receiverFailed("dr:7000", stage: .refused, Failure(description: "unknown source")).line
                == "FAIL  receiver: dr:7000: unknown source")
        #expect(
            CheckVerdicts.receiverNotTried("dr:7000").line
                == "FAIL  receiver: dr:7000 not tried: the TLS files cannot be loaded (see above)")
        #expect(
            CheckVerdicts.receiverPort("dr:7000", connectError: nil).line
                == "WARN  receiver: dr:7000 accepts connections; the handshake was not tried without the source's system identifier"
        )
        #expect(
            CheckVerdicts.receiverPort("dr:7000", connectError: "Connection refused").line
                == "FAIL  receiver: dr:7000 unreachable: Connection refused")
    }

    @Test func spoolStates() {
        #expect(
            CheckVerdicts.spool("/srv/spool", .missing(parent: "/srv", parentWritable: true)).line
                == "ok    spool: /srv/spool does not exist yet; walship receive creates it (in /srv, writable)")
        #expect(
            CheckVerdicts.spool("/srv/spool", .missing(parent: "/srv", parentWritable: false)).line
                == "FAIL  spool: /srv/spool does not exist and /srv is not writable for this user (hint: install -d -o postgres -g postgres -m 0750 /srv/spool)"
        )
        #expect(CheckVerdicts.spool("/srv/spool", .notDirectory).line == "FAIL  spool: /srv/spool is not a directory")
        #expect(
            CheckVerdicts.spool("/srv/spool", .cannotCreateFile(reason: "Permission denied")).line
                == "FAIL  spool: /srv/spool is not writable for this user: Permission denied (hint: the receiver runs as the postgres OS user: chown -R postgres:postgres /srv/spool)"
        )
        #expect(
            CheckVerdicts.spool("/srv/spool", .writeFailed(reason: "No space left on device")).line
                == "FAIL  spool: writing to /srv/spool failed: No space left on device")
        #expect(
            CheckVerdicts.spool("/srv/spool", .writable(systems: [], freePercent: 41.6)).line
                == "ok    spool: /srv/spool is writable and fsyncs (no system yet, 42% free)")
        #expect(
            CheckVerdicts.spool("/srv/spool", .writable(systems: [7, 9], freePercent: nil)).line
                == "ok    spool: /srv/spool is writable and fsyncs (systems 7, 9)")
    }

    @Test func spoolProbeFindsAWritableDirectoryAndAMissingOne() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("walship-check-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        guard case .writable(let systems, _) = probeSpool(directory) else {
            Issue.record("a fresh temporary directory must be writable")
            return
        }
        #expect(systems.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
        #expect(probeSpool(directory + "/a/b") == .missing(parent: directory, parentWritable: true))
    }

    @Test func listenAddresses() {
        #expect(
            CheckVerdicts.listen(
                option: "listen", address: "0.0.0.0:7000", port: 7000, bindError: nil, runningPID: nil, statusListen: nil
            ).line == "ok    listen: 0.0.0.0:7000 is free to bind")
        #expect(
            CheckVerdicts.listen(
                option: "standby-listen", address: "127.0.0.1:7010", port: 7010, bindError: EADDRINUSE, runningPID: 42,
                statusListen: "127.0.0.1:7020"
            ).line
                == "ok    standby-listen: 127.0.0.1:7010 is in use by the running walship receive (pid 42), whose status endpoint answers at 127.0.0.1:7020"
        )
        #expect(
            CheckVerdicts.listen(
                option: "listen", address: "0.0.0.0:7000", port: 7000, bindError: EADDRINUSE, runningPID: nil, statusListen: nil
            ).line
                == "FAIL  listen: 0.0.0.0:7000 is in use, and no walship receive answers at status-listen to claim it (hint: ss -ltnp 'sport = :7000' shows which program holds it)"
        )
        #expect(
            CheckVerdicts.listen(
                option: "listen", address: "10.9.9.9:7000", port: 7000, bindError: EADDRNOTAVAIL, runningPID: nil,
                statusListen: nil
            ).line
                == "FAIL  listen: cannot bind 10.9.9.9:7000: Cannot assign requested address (hint: the address is not one of this host's)"
        )
        #expect(
            CheckVerdicts.listen(
                option: "listen", address: "0.0.0.0:70", port: 70, bindError: EACCES, runningPID: nil, statusListen: nil
            ).line == "FAIL  listen: cannot bind 0.0.0.0:70: Permission denied (hint: ports below 1024 need privileges)")
    }

    @Test func standbyCredential() {
        #expect(
            CheckVerdicts.standbyTrusted.line == "ok    standby credential: none (standby-trust on a loopback standby-listen)")
        #expect(
            CheckVerdicts.standbyCredential(file: "/etc/w/pw", text: "SCRAM-SHA-256$4096:abc$x:y\n", mode: 0o600).map(\.line)
                == ["ok    standby credential: /etc/w/pw holds a SCRAM-SHA-256 verifier"])
        #expect(
            CheckVerdicts.standbyCredential(file: "/etc/w/pw", text: "secret\n", mode: 0o644).map(\.line) == [
                "ok    standby credential: /etc/w/pw holds a password (a SCRAM-SHA-256 verifier keeps the password off this host)",
                "WARN  standby credential: /etc/w/pw is readable by every user (mode 644) (hint: chmod 0600 /etc/w/pw)",
            ])
        #expect(
            CheckVerdicts.standbyCredentialUnusable(Failure(description: "--standby-password-file /x is empty")).line
                == "FAIL  standby credential: --standby-password-file /x is empty")
    }

    @Test func certificatesWithoutTLS() {
        #expect(CheckVerdicts.plaintext.line == "WARN  certificates: none; the link runs in plaintext (insecure = true)")
    }
}
