import Foundation
import Testing

/// The lag monitor against real movement: a paused DR standby makes lag rise, alerts fire once and
/// recover, `walship status` exit codes follow, the dashboard renders in a real browser.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct MonitorTests {
    /// Every alert event the alert command received, one JSON object per line.
    func alertEvents(_ path: String) -> [[String: Any]] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func events(_ path: String, _ condition: String, _ kind: String) -> Int {
        alertEvents(path).filter { $0["condition"] as? String == condition && $0["event"] as? String == kind }.count
    }

    func replayedStage(_ port: Int) throws -> [String: Any] {
        let system = (try fetchStatus(port: port)["systems"] as? [[String: Any]])?.first
        let chain = system?["chain"] as? [[String: Any]] ?? []
        return chain.first { $0["name"] as? String == "replayed" } ?? [:]
    }

    func statusExit(_ port: Int, _ extra: [String] = []) throws -> CommandResult {
        try run(IT.walshipBinary, ["status", "--url", "http://127.0.0.1:\(port)"] + extra, check: false)
    }

    @Test func lagAlertsStatusAndDashboardFollowRealMovement() throws {
        let fixture = try Fixture("monitor")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        let standbyPort = IT.freePort()
        let alerts = fixture.directory + "/alerts.jsonl"
        topology.receiverExtra = [
            "--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust",
            "--alert-command", "cat >> \(alerts); echo >> \(alerts)", "--alert-lag-bytes", "4000000",
            "--alert-disconnect-seconds", "2", "--alert-recovery-seconds", "2", "--alert-spool-free-percent", "0.001",
        ]
        try topology.startReceiver()
        try topology.startSender()
        try fixture.baseBackup(of: topology.primary, name: "dr")
        let standby = try fixture.startCopy(
            name: "dr", signal: "standby.signal",
            settings: [
                "primary_conninfo = 'host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr_replica'",
                "hot_standby = on", "wal_retrieve_retry_interval = '1s'",
            ])
        try topology.primary.sql("CREATE TABLE observations (id serial PRIMARY KEY, value text)")
        try waitUntil("the replayed stage in the receiver's status", timeout: 60) {
            let stage = try replayedStage(topology.receiverStatusPort)
            return (stage["lsn"] is String && (stage["bytesBehind"] as? Int) == 0, "\(stage)")
        }
        // The new standby catching up from its base backup may have raised (and cleared) a lag alert.
        var ok = try statusExit(topology.receiverStatusPort)
        try waitUntil("walship status to report OK", timeout: 30) {
            ok = try statusExit(topology.receiverStatusPort)
            return (ok.status == 0, ok.output)
        }
        #expect(ok.output.contains("replayed") && ok.output.contains("OK"), "\(ok.output)")
        let lagFirings = events(alerts, "lag_bytes", "firing")
        #expect(try statusExit(topology.senderStatusPort).status == 0)
        // A real Prometheus scrapes both processes with the shipped rules loaded; promtool finds nothing to flag
        // in either exposition.
        let prometheus = try startPrometheus(fixture, scraping: [topology.receiverStatusPort, topology.senderStatusPort])
        for port in [topology.receiverStatusPort, topology.senderStatusPort] {
            let exposition = try run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(port)/metrics"]).output
            let file = fixture.directory + "/metrics-\(port).txt"
            try Data(exposition.utf8).write(to: URL(fileURLWithPath: file))
            let check = try run("/bin/sh", ["-c", "promtool check metrics < \(file)"], check: false)
            #expect(check.status == 0 && check.output.isEmpty && check.error.isEmpty, "\(check.output)\(check.error)")
        }
        try waitUntil("Prometheus to scrape both processes", timeout: 30) {
            let up = try prometheusQuery(prometheus, "sum(up{job=\"walship\"})")
            return (up == "2", "up: \(up ?? "none")")
        }

        // Pause replay and write: lag in bytes and seconds rises, one alert fires.
        try standby.sql("SELECT pg_wal_replay_pause()")
        try topology.primary.pgbench(["-i", "-s", "2", "-q"])
        try topology.primary.sql("INSERT INTO observations (value) SELECT repeat('x', 100) FROM generate_series(1, 20000)")
        try waitUntil("lag to rise past the alert threshold", timeout: 60) {
            let stage = try replayedStage(topology.receiverStatusPort)
            let bytes = stage["bytesBehind"] as? Int ?? 0
            let seconds = (stage["secondsBehind"] as? NSNumber)?.doubleValue ?? 0
            return (
                bytes > 4_000_000 && seconds > 0 && events(alerts, "lag_bytes", "firing") == lagFirings + 1,
                "\(stage), alerts: \(alertEvents(alerts))"
            )
        }
        let firstSeconds = (try replayedStage(topology.receiverStatusPort)["secondsBehind"] as? NSNumber)?.doubleValue ?? 0
        try waitUntil("lag in seconds to keep rising while replay is paused", timeout: 30) {
            let now = (try replayedStage(topology.receiverStatusPort)["secondsBehind"] as? NSNumber)?.doubleValue ?? 0
            return (now >= firstSeconds + 1, "\(firstSeconds) → \(now)")
        }
        let metrics = try run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(topology.receiverStatusPort)/metrics"]).output
        let lagLine = metrics.split(separator: "\n").first {
            $0.hasPrefix("walship_lag_bytes{") && $0.contains(#"stage="replayed""#)
        }
        #expect(lagLine.map { (Double($0.split(separator: " ").last ?? "") ?? 0) > 4_000_000 } == true, "\(metrics)")
        #expect(metrics.contains(#"walship_alert_active{condition="lag_bytes""#))
        try waitUntil("Prometheus to show the lag alert firing", timeout: 60) {
            let states = try prometheusAlertStates(prometheus, "WalshipDRLagging")
            return (states == ["firing"], "WalshipDRLagging: \(states)")
        }
        let warning = try statusExit(topology.receiverStatusPort, ["--warning-lag-bytes", "1000000"])
        #expect(warning.status == 1, "\(warning.output)")
        #expect(warning.output.contains("WARNING"), "\(warning.output)")
        // The sender does not raise lag alerts: each condition has one owner.
        #expect(!(try String(contentsOfFile: topology.sender!.logPath, encoding: .utf8)).contains("lag_bytes"))

        // The dashboard renders the chain with real values in a real browser.
        try renderDashboard(port: topology.receiverStatusPort, into: fixture.logDirectory)

        // Resume: lag falls to zero, the recovery notice comes once, status is OK again.
        try resumeReplay(standby)
        try waitUntil("lag to fall and the alert to recover", timeout: 90) {
            let stage = try replayedStage(topology.receiverStatusPort)
            return (
                (stage["bytesBehind"] as? Int) == 0 && events(alerts, "lag_bytes", "resolved") == lagFirings + 1,
                "\(stage), alerts: \(alertEvents(alerts))"
            )
        }
        #expect(events(alerts, "lag_bytes", "firing") == lagFirings + 1)
        try waitUntil("the lag alert to resolve in Prometheus", timeout: 30) {
            let states = try prometheusAlertStates(prometheus, "WalshipDRLagging")
            return (states.isEmpty, "WalshipDRLagging: \(states)")
        }
        ok = try statusExit(topology.receiverStatusPort, ["--json"])
        #expect(ok.status == 0, "\(ok.output)")
        #expect((try? JSONSerialization.jsonObject(with: Data(ok.output.utf8))) != nil)

        // The sender dies: the receiver raises one disconnect alert and status turns CRITICAL.
        topology.sender!.kill9()
        try waitUntil("the disconnect alert", timeout: 30) {
            (events(alerts, "sender_disconnected", "firing") == 1, "\(alertEvents(alerts))")
        }
        #expect(try statusExit(topology.receiverStatusPort).status == 2)
        try topology.startSender()
        try waitUntil("the disconnect alert to recover", timeout: 30) {
            (events(alerts, "sender_disconnected", "resolved") == 1, "\(alertEvents(alerts))")
        }
        #expect(events(alerts, "sender_disconnected", "firing") == 1)
        // Nothing else fired: no flood, no alert without cause.
        let conditions = Set(alertEvents(alerts).compactMap { $0["condition"] as? String })
        #expect(conditions == ["lag_bytes", "sender_disconnected"], "\(alertEvents(alerts))")
        // Each alert is also in the receiver's log.
        #expect(topology.receiver!.log.contains("alert firing"))

        // Nothing listening: UNKNOWN.
        #expect(try statusExit(IT.freePort()).status == 3)

        // promote refuses, promoting nothing, a standby that streams from elsewhere...
        try standby.sql("ALTER SYSTEM SET primary_conninfo = '\(topology.primary.conninfo)'")
        try standby.sql("SELECT pg_reload_conf()")
        let elsewhere = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool,
                "--report", fixture.logDirectory + "/refused-elsewhere",
            ], check: false)
        #expect(
            elsewhere.status == 1 && elsewhere.error.contains("does not replicate from this walship receiver"),
            "\(output(elsewhere))")
        try standby.sql("ALTER SYSTEM RESET primary_conninfo")
        try standby.sql("SELECT pg_reload_conf()")
        // ...and one that cannot reach WAL the receiver holds (replay paused here).
        try standby.sql("SELECT pg_wal_replay_pause()")
        try topology.primary.sql("INSERT INTO observations (value) SELECT 'late' FROM generate_series(1, 1000)")
        let late = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the spool to hold the late rows", timeout: 30) { (try topology.durable() >= late, "") }
        // Promotion waits for a lost primary first.
        kill(try postmasterPID(of: topology.primary), SIGKILL)
        try waitForPromotionReady(statusPort: topology.receiverStatusPort, timeout: 30)
        let behind = try run(
            IT.walshipBinary,
            [
                "promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool, "--timeout", "3",
                "--report", fixture.logDirectory + "/refused-behind",
            ], check: false)
        #expect(behind.status == 1 && behind.error.contains("cannot reach the received WAL"), "\(output(behind))")
        #expect(try standby.sql("SELECT pg_is_in_recovery()") == "t")
        #expect(!FileManager.default.fileExists(atPath: topology.spool + "/" + topology.systemIdentifier + "/FENCED"))
        try resumeReplay(standby)
    }

    func output(_ r: CommandResult) -> String { r.output + r.error }

    /// Prometheus from Debian's package on a free port, scraping `ports` every second as job `walship`, with the
    /// shipped rules (compose/alert-rules.yml) loaded, their waits and the replay-lag threshold scaled down to
    /// seconds so a paused standby trips them within a test. Returns its port.
    func startPrometheus(_ fixture: Fixture, scraping ports: [Int]) throws -> Int {
        let directory = fixture.directory + "/prometheus"
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        let shippedPath = IT.repositoryRoot + "/compose/alert-rules.yml"
        try run("/usr/bin/promtool", ["check", "rules", shippedPath])
        let shipped = try String(contentsOfFile: shippedPath, encoding: .utf8)
        let scaled = shipped.replacing(/for: \d+[smh]/, with: "for: 2s").replacing(
            #"(walship_lag_seconds{stage="replayed"}) > 60"#, with: #"(walship_lag_seconds{stage="replayed"}) > 1"#)
        #expect(scaled.contains("> 1\n") && !scaled.contains("for: 1m"), "the shipped rules changed shape: \(shipped)")
        try Data(scaled.utf8).write(to: URL(fileURLWithPath: directory + "/rules.yml"))
        let targets = ports.map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", ")
        let config = """
            global: { scrape_interval: 1s, evaluation_interval: 1s }
            rule_files: [\(directory)/rules.yml]
            scrape_configs:
              - job_name: walship
                static_configs: [{ targets: [\(targets)] }]
            """
        try Data(config.utf8).write(to: URL(fileURLWithPath: directory + "/prometheus.yml"))
        let port = IT.freePort()
        _ = try fixture.daemon(
            "prometheus", "/usr/bin/prometheus",
            [
                "--config.file", directory + "/prometheus.yml", "--storage.tsdb.path", directory + "/data",
                "--web.listen-address", "127.0.0.1:\(port)",
            ])
        try waitUntil("Prometheus to be ready", timeout: 30) {
            let ready = try run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(port)/-/ready"], check: false)
            return (ready.status == 0, ready.output + ready.error)
        }
        return port
    }

    /// The value of an instant query's first sample, or nil when the result is empty.
    func prometheusQuery(_ port: Int, _ expression: String) throws -> String? {
        let answer = try run(
            "/usr/bin/curl",
            ["-sfG", "http://127.0.0.1:\(port)/api/v1/query", "--data-urlencode", "query=\(expression)"])
        let document = try JSONSerialization.jsonObject(with: Data(answer.output.utf8)) as? [String: Any]
        let result = (document?["data"] as? [String: Any])?["result"] as? [[String: Any]]
        return (result?.first?["value"] as? [Any])?.last as? String
    }

    /// The states (`pending`, `firing`) of the alerts named `name` that Prometheus has active.
    func prometheusAlertStates(_ port: Int, _ name: String) throws -> [String] {
        let answer = try run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(port)/api/v1/alerts"])
        let document = try JSONSerialization.jsonObject(with: Data(answer.output.utf8)) as? [String: Any]
        let alerts = (document?["data"] as? [String: Any])?["alerts"] as? [[String: Any]] ?? []
        return alerts.filter { ($0["labels"] as? [String: String])?["alertname"] == name }.compactMap { $0["state"] as? String }
    }

    /// Replay resumed at once may cancel the very statement that resumed it: after a long pause the standby's
    /// grace for conflicting queries (max_standby_streaming_delay, counted from the WAL's arrival) is spent.
    /// The resume has taken effect then.
    func resumeReplay(_ standby: Cluster) throws {
        do {
            try standby.sql("SELECT pg_wal_replay_resume()")
        } catch  where "\(error)".contains("conflict with recovery") {}
        #expect(try standby.sql("SELECT pg_get_wal_replay_pause_state()") == "not paused")
    }

    /// The sender owns "receiver unreachable": posted once to a webhook when the receiver dies, once more
    /// when it is back.
    @Test func senderPostsReceiverUnreachableToAWebhook() throws {
        let fixture = try Fixture("monitor-webhook")
        defer { fixture.tearDown() }
        let hookPort = IT.freePort()
        let posted = fixture.directory + "/posted.jsonl"
        let server = fixture.directory + "/hook.py"
        try """
        import http.server, sys
        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers['Content-Length']))
                with open(sys.argv[2], 'ab') as f: f.write(body + b'\\n')
                self.send_response(204); self.end_headers()
            def log_message(self, *args): pass
        http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Hook).serve_forever()
        """.write(toFile: server, atomically: true, encoding: .utf8)
        _ = try fixture.daemon("webhook", "/usr/bin/python3", [server, "\(hookPort)", posted])
        var topology = try ShipTopology(fixture)
        try topology.startReceiver()
        try topology.startSender(extra: [
            "--alert-webhook", "http://127.0.0.1:\(hookPort)/walship", "--alert-disconnect-seconds", "2",
            "--alert-recovery-seconds", "1",
        ])
        topology.receiver!.kill9()
        try waitUntil("the webhook to get receiver_unreachable", timeout: 40) {
            (
                events(posted, "receiver_unreachable", "firing") == 1,
                "\(alertEvents(posted)); sender: \(topology.sender!.log.suffix(500))"
            )
        }
        // Asked again until it answers: on a busy host one request can outlast walship status's 5 s (UNKNOWN).
        try waitUntil("walship status to say CRITICAL while the receiver is down", timeout: 30) {
            let statusWhileDown = try statusExit(topology.senderStatusPort)
            return (statusWhileDown.status == 2, "\(statusWhileDown.status): \(statusWhileDown.output)")
        }
        try topology.startReceiver()
        try waitUntil("the webhook to get the recovery", timeout: 60) {
            (events(posted, "receiver_unreachable", "resolved") == 1, "\(alertEvents(posted))")
        }
        #expect(events(posted, "receiver_unreachable", "firing") == 1)
        let event = try #require(alertEvents(posted).first)
        #expect(event["role"] as? String == "sender" && event["source"] as? String == "walship")
    }

    /// Loads the dashboard in headless Chromium (virtual time lets its scripts fetch /status and draw),
    /// keeps a screenshot in the test output, and checks the chain shows real values.
    func renderDashboard(port: Int, into directory: String) throws {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
        let browser = try #require(chromium, "headless Chromium is needed to check the dashboard (make deps installs it)")
        let common = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--user-data-dir=\(directory)/chromium-profile", "--virtual-time-budget=8000", "--window-size=1200,1000",
        ]
        let url = "http://127.0.0.1:\(port)/"
        let dom = try run(browser, common + ["--dump-dom", url], timeout: 90, check: false)
        #expect(dom.output.contains(#"data-loaded="true""#), "dashboard did not load: \(dom.error.suffix(800))")
        #expect(dom.output.contains(#"data-stage="replayed""#))
        let lagValues = dom.output.components(separatedBy: #"class="lag-bytes""#).dropFirst().compactMap { chunk -> String? in
            guard let start = chunk.firstIndex(of: ">"), let end = chunk.firstIndex(of: "<") else { return nil }
            return String(chunk[chunk.index(after: start)..<end])
        }
        #expect(lagValues.contains { $0.hasSuffix("B") }, "lag values on the page: \(lagValues)")
        let shot = directory + "/dashboard.png"
        _ = try run(browser, common + ["--screenshot=\(shot)", url], timeout: 90, check: false)
        #expect(FileManager.default.fileExists(atPath: shot), "no screenshot at \(shot)")
    }
}
