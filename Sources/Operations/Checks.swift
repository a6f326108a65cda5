import Foundation
import Logging
import Monitor
import PGReplication
import Sender
import ShipTLS
import Spool
import StatusModel
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// What `walship check` tries for `walship send`, taken from its parsed options.
public struct SenderCheckSettings: Sendable {
    public var source: String
    public var to: String
    public var slot: String
    public var createSlot: Bool
    public var applicationName: String
    public var sync: Bool
    public var tlsFiles: TLSFiles?
    public var tlsServerName: String?
    public var linkTimeout: Int
    /// Clock difference, in seconds, beyond which the clock checks warn.
    public var maxClockSkew: Double

    public init(
        source: String, to: String, slot: String, createSlot: Bool, applicationName: String, sync: Bool,
        tlsFiles: TLSFiles?, tlsServerName: String?, linkTimeout: Int, maxClockSkew: Double
    ) {
        self.source = source
        self.to = to
        self.slot = slot
        self.createSlot = createSlot
        self.applicationName = applicationName
        self.sync = sync
        self.tlsFiles = tlsFiles
        self.tlsServerName = tlsServerName
        self.linkTimeout = linkTimeout
        self.maxClockSkew = maxClockSkew
    }
}

/// Gathers what the sender's checks need (the source, its slot and settings, the receiver's handshake)
/// and adds each verdict to the report as it is known.
public func checkSender(_ settings: SenderCheckSettings, _ report: inout CheckReport) async {
    let logger = Logger(label: "walship.check")
    var tls: ClientTLS?
    var tlsUsable = true
    if let files = settings.tlsFiles {
        let findings = files.inspect()
        findings.forEach { report.add(CheckVerdicts.certificates($0)) }
        // Even with a finding (say, a foreign CA) the files may load: then the handshake below shows
        // what the receiver makes of them.
        do {
            tls = ClientTLS(context: try files.clientContext(), serverName: settings.tlsServerName)
        } catch {
            tlsUsable = false
            if !findings.contains(where: { $0.level == .failure }) { report.add(CheckVerdicts.certificatesUnusable(error)) }
        }
    } else {
        report.add(CheckVerdicts.plaintext)
    }

    let conninfo: Conninfo
    do {
        conninfo = try Conninfo(settings.source)
    } catch {
        report.add(CheckVerdicts.sourceInvalid(error))
        return
    }
    var identity: SystemIdentity?
    let session = ReplicationSession(conninfo: conninfo, logger: logger)
    do {
        let found = try await session.connect(applicationName: "walship check")
        identity = found
        report.add(
            CheckVerdicts.source(
                conninfo: "\(conninfo)", serverVersion: found.serverVersion, systemIdentifier: found.systemIdentifier,
                timeline: found.timeline))
        do {
            let slot = try await session.readSlot(settings.slot)
            report.add(
                CheckVerdicts.slot(
                    settings.slot, slot.map { .present(restartLSN: $0.restartLSN) } ?? .absent, createSlot: settings.createSlot))
        } catch {
            report.add(CheckVerdicts.slotUnreadable(error))
        }
    } catch {
        report.add(CheckVerdicts.sourceUnreachable(conninfo: "\(conninfo)", error))
    }
    await session.close()

    if identity != nil {
        checkPrimarySettings(conninfo, settings, &report)
    }
    if !tlsUsable {
        report.add(CheckVerdicts.receiverNotTried(settings.to))
    } else if let identity {
        await checkReceiverHandshake(identity: identity, tls: tls, settings, &report)
    } else if let endpoint = Monitor.parseHostPort(settings.to) {
        let error = NetworkProbe.connect(host: endpoint.host, port: endpoint.port, timeout: 10)
        report.add(CheckVerdicts.receiverPort(settings.to, connectError: error))
    }
}

/// The primary's clock and synchronous_standby_names through an ordinary SQL connection (a physical
/// replication connection runs no SQL). Such a connection needs a database and a pg_hba line; without them
/// neither is checked.
private func checkPrimarySettings(_ conninfo: Conninfo, _ settings: SenderCheckSettings, _ report: inout CheckReport) {
    var sql = conninfo
    if sql["dbname"] == nil { sql["dbname"] = "postgres" }
    do {
        let connection = try PGConnection(sql, replication: false, applicationName: "walship check")
        let before = Date().timeIntervalSince1970
        let rows = try connection.query(
            """
            SELECT extract(epoch FROM clock_timestamp())::text, current_setting('synchronous_standby_names'),
                   current_user::text,
                   (pg_has_role(current_user, 'pg_monitor', 'USAGE')
                    OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'))::text,
                   current_setting('synchronous_commit'),
                   (SELECT sync_state FROM pg_stat_replication WHERE application_name = $1
                    ORDER BY state = 'streaming' DESC LIMIT 1)
            """, [settings.applicationName])
        let after = Date().timeIntervalSince1970
        if let text = rows.first?.first ?? nil, let primary = Double(text) {
            report.add(
                CheckVerdicts.clock(peer: "the primary", offset: primary - (before + after) / 2, maxSkew: settings.maxClockSkew))
        } else {
            report.add(CheckVerdicts.primaryGaveNoTime)
        }
        if let row = rows.first, row.count > 5, let names = row[1] {
            report.add(CheckVerdicts.monitorRole(user: row[2] ?? "?", canRead: row[3] == "true"))
            report.add(
                CheckVerdicts.synchronous(
                    standbyNames: names, applicationName: settings.applicationName, sync: settings.sync,
                    syncState: row[5], synchronousCommit: row[4]))
        }
    } catch {
        report.add(CheckVerdicts.clockNotMeasured(error))
    }
}

private func checkReceiverHandshake(
    identity: SystemIdentity, tls: ClientTLS?, _ settings: SenderCheckSettings, _ report: inout CheckReport
) async {
    guard let endpoint = Monitor.parseHostPort(settings.to) else { return }
    do {
        let probe = try await probeReceiver(
            host: endpoint.host, port: endpoint.port, tls: tls, systemIdentifier: identity.systemIdentifier,
            timeline: identity.timeline, walSegmentSize: UInt32(identity.segmentSize.bytes),
            senderName: settings.applicationName, timeout: .seconds(min(settings.linkTimeout, 15)))
        report.add(
            CheckVerdicts.receiverAnswered(
                settings.to, overTLS: tls != nil, receiverName: probe.receiverName, resumeLSN: probe.resumeLSN,
                resumeTimeline: probe.resumeTimeline))
        if let offset = probe.clockOffset {
            report.add(
                CheckVerdicts.clock(
                    peer: "the receiver", offset: offset, roundTrip: probe.roundTripSeconds, maxSkew: settings.maxClockSkew))
        }
    } catch let error as ReceiverProbeError {
        report.add(CheckVerdicts.receiverFailed(settings.to, stage: error.stage, error))
    } catch {
        report.add(CheckVerdicts.receiverFailed(settings.to, stage: nil, error))
    }
}

/// What `walship check` tries for `walship receive`, taken from its parsed options.
public struct ReceiverCheckSettings {
    public var spool: String
    public var listen: String
    public var standbyListen: String?
    public var statusListen: String?
    public var tlsFiles: TLSFiles?
    public var standbyTrust: Bool
    public var standbyPasswordFile: String?
    /// Loads the standby credential as walship receive would, throwing what it would refuse.
    public var loadStandbyCredential: () throws -> Void

    public init(
        spool: String, listen: String, standbyListen: String?, statusListen: String?, tlsFiles: TLSFiles?,
        standbyTrust: Bool, standbyPasswordFile: String?, loadStandbyCredential: @escaping () throws -> Void
    ) {
        self.spool = spool
        self.listen = listen
        self.standbyListen = standbyListen
        self.statusListen = statusListen
        self.tlsFiles = tlsFiles
        self.standbyTrust = standbyTrust
        self.standbyPasswordFile = standbyPasswordFile
        self.loadStandbyCredential = loadStandbyCredential
    }
}

/// Gathers what the receiver's checks need (its certificates, spool, addresses and standby credential) and
/// adds each verdict to the report as it is known.
public func checkReceiver(_ settings: ReceiverCheckSettings, _ report: inout CheckReport) async {
    if let files = settings.tlsFiles {
        let findings = files.inspect()
        findings.forEach { report.add(CheckVerdicts.certificates($0)) }
        if !findings.contains(where: { $0.level == .failure }) {
            do { _ = try files.serverContext() } catch { report.add(CheckVerdicts.certificatesUnusable(error)) }
        }
    } else {
        report.add(CheckVerdicts.plaintext)
    }
    let root = absolutePath(settings.spool)
    report.add(CheckVerdicts.spool(root, probeSpool(root)))
    let running = await runningReceiver(statusListen: settings.statusListen)
    let addresses =
        [("listen", settings.listen)] + (settings.standbyListen.map { [("standby-listen", $0)] } ?? [])
        + (settings.statusListen.map { [("status-listen", $0)] } ?? [])
    for (option, address) in addresses {
        guard let endpoint = Monitor.parseHostPort(address) else { continue }
        report.add(
            CheckVerdicts.listen(
                option: option, address: address, port: endpoint.port,
                bindError: NetworkProbe.bind(host: endpoint.host, port: endpoint.port), runningPID: running?.process.pid,
                statusListen: settings.statusListen))
    }
    guard settings.standbyListen != nil else { return }
    if settings.standbyTrust {
        report.add(CheckVerdicts.standbyTrusted)
    } else if let file = settings.standbyPasswordFile {
        do {
            try settings.loadStandbyCredential()
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            let mode = (try? FileManager.default.attributesOfItem(atPath: file))?[.posixPermissions] as? Int
            CheckVerdicts.standbyCredential(file: file, text: text, mode: mode).forEach { report.add($0) }
        } catch {
            report.add(CheckVerdicts.standbyCredentialUnusable(error))
        }
    }
}

/// Tries the spool as the receiver would use it: a probe file written, fsynced and removed, as every segment is.
func probeSpool(_ root: String) -> CheckVerdicts.SpoolState {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory) else {
        // walship receive creates the spool; it can when the nearest existing parent is writable.
        var parent = (root as NSString).deletingLastPathComponent
        while !FileManager.default.fileExists(atPath: parent), parent != "/" {
            parent = (parent as NSString).deletingLastPathComponent
        }
        return .missing(parent: parent, parentWritable: access(parent, W_OK) == 0)
    }
    guard isDirectory.boolValue else { return .notDirectory }
    let probe = root + "/.walship-check-\(getpid())"
    let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return .cannotCreateFile(reason: String(cString: strerror(errno))) }
    let bytes = [UInt8](repeating: 0, count: 8192)
    let written = write(fd, bytes, bytes.count)
    let synced = fsync(fd)
    let error = errno
    close(fd)
    unlink(probe)
    let directory = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if directory >= 0 {
        fsync(directory)
        close(directory)
    }
    guard written == bytes.count, synced == 0 else { return .writeFailed(reason: String(cString: strerror(error))) }
    var freePercent: Double?
    var stats = statvfs()
    if statvfs(root, &stats) == 0, stats.f_blocks > 0 {
        freePercent = Double(stats.f_bavail) / Double(stats.f_blocks) * 100
    }
    return .writable(systems: (try? Spool.systemIdentifiers(root: root)) ?? [], freePercent: freePercent)
}

/// The status document of a receiver already serving this configuration, when its status endpoint answers.
private func runningReceiver(statusListen: String?) async -> StatusDocument? {
    guard let document = await statusDocument(listen: statusListen, timeout: 5), document.role == "receiver" else {
        return nil
    }
    return document
}

/// The status document a walship process serves on `listen` (its --status-listen: a wildcard address is asked on
/// loopback), or nil when it does not answer with one.
func statusDocument(listen: String?, timeout: Double) async -> StatusDocument? {
    guard let listen, let endpoint = Monitor.parseHostPort(listen) else { return nil }
    let host = ["0.0.0.0", "::"].contains(endpoint.host) ? "127.0.0.1" : endpoint.host
    guard let url = URL(string: "http://\(host.contains(":") ? "[\(host)]" : host):\(endpoint.port)/status"),
        let data = try? await fetchStatusData(url, timeout: timeout)
    else { return nil }
    return try? StatusDocument.decoder().decode(StatusDocument.self, from: data)
}
