import Foundation
import Testing

/// No container engine runs here, so the deployment files are checked against the real program: the
/// compose file and Prometheus rules parse, and every walship command line in compose/ and
/// contrib/systemd/ uses only subcommands and options `walship … --help` really has.
@Suite struct DeploymentFilesTests {
    static let root = IT.repositoryRoot
    /// The longest a stop by signal may take before walship exits by itself (`runUntilStopped`).
    static let drainLimitSeconds = 10

    /// The options `walship SUBCOMMAND… --help` lists.
    func options(_ subcommand: [String]) throws -> Set<String> {
        let help = try run(IT.walshipBinary, subcommand + ["--help"], timeout: 30)
        let matches = help.output.matches(of: /--[a-z][a-z0-9-]*/).map { String($0.output) }
        return Set(matches)
    }

    /// Every `walship SUB [SUB2] --flag …` in `text`, checked against the program.
    func checkCommandLines(in text: String, source: String) throws -> Int {
        var checked = 0
        for line in text.matches(of: /walship ((?:certs )?[a-z-]+)([^;\n"\]]*)/) {
            let subcommand = String(line.output.1).split(separator: " ").map(String.init)
            let known = try options(subcommand)
            #expect(!known.isEmpty, "\(source): walship \(subcommand.joined(separator: " ")) is not a command")
            for flag in String(line.output.2).matches(of: /--[a-z][a-z0-9-]*/).map({ String($0.output) }) {
                #expect(known.contains(flag), "\(source): walship \(subcommand.joined(separator: " ")) has no option \(flag)")
                checked += 1
            }
        }
        return checked
    }

    func yamlAsJSON(_ path: String) throws -> Any {
        let r = try run(
            "/usr/bin/python3", ["-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))", path])
        return try JSONSerialization.jsonObject(with: Data(r.output.utf8))
    }

    @Test func dockerfileBuildsWhatMakeReleaseBuilds() throws {
        let dockerfile = try String(contentsOfFile: Self.root + "/compose/Dockerfile", encoding: .utf8)
        let makefile = try String(contentsOfFile: Self.root + "/Makefile", encoding: .utf8)
        let manifest = try String(contentsOfFile: Self.root + "/Package.swift", encoding: .utf8)
        // SwiftPM checks every target's directory before building even one product: all must be copied in.
        var directories: Set<String> = ["Sources", "Tests"]
        for custom in manifest.matches(of: /path: "([^"\/]+)/) { directories.insert(String(custom.output.1)) }
        let copied = Set(dockerfile.matches(of: #/(?m)^COPY (\S+) /#).map { String($0.output.1) })
        #expect(
            copied.isSuperset(of: directories), "compose/Dockerfile does not copy \(directories.subtracting(copied).sorted())")
        // The same link flags as `make release`.
        let flags = try #require(makefile.firstMatch(of: /(?m)^RELEASE_LINK_FLAGS = (.+)$/)).output.1
        let joined = dockerfile.replacing(/\s*\\\n\s*/, with: " ")
        #expect(
            joined.contains("swift build -c release --static-swift-stdlib --product walship \(flags)"),
            "compose/Dockerfile's build differs from make release's flags: \(flags)")
    }

    @Test func composeStackUsesRealOptions() throws {
        let compose = try #require(try yamlAsJSON(Self.root + "/compose/compose.yaml") as? [String: Any])
        let services = try #require(compose["services"] as? [String: [String: Any]])
        #expect(Set(services.keys).isSuperset(of: ["primary", "sender", "receiver", "dr-standby", "prometheus", "grafana"]))
        var checked = 0
        for name in ["sender", "receiver"] {
            // docker stop sends SIGTERM, then SIGKILL after the grace period: longer than walship's drain may take.
            let service = try #require(services[name])
            #expect(service["stop_signal"] as? String == "SIGTERM", "compose service \(name) does not stop with SIGTERM")
            let grace = (service["stop_grace_period"] as? String)?.firstMatch(of: /^(\d+)s$/).flatMap { Int($0.output.1) }
            #expect(
                grace.map { $0 > Self.drainLimitSeconds } == true,
                "compose service \(name): stop_grace_period \(service["stop_grace_period"] ?? "unset") leaves no time for the drain"
            )
        }
        for (name, service) in services {
            // Services built from the walship image run `walship COMMAND…` (their entrypoint).
            if let command = service["command"] as? [String], (service["image"] as? String) == "walship:local" {
                checked += try checkCommandLines(
                    in: "walship " + command.joined(separator: " "), source: "compose service \(name)")
            }
            if let entrypoint = service["entrypoint"] as? [String] {
                checked += try checkCommandLines(in: entrypoint.joined(separator: " "), source: "compose service \(name)")
            }
        }
        #expect(checked > 30, "only \(checked) options checked")
        let rules = try #require(try yamlAsJSON(Self.root + "/compose/alert-rules.yml") as? [String: Any])
        #expect((rules["groups"] as? [[String: Any]])?.first?["rules"] != nil)
        _ = try yamlAsJSON(Self.root + "/compose/prometheus.yml")
        let dashboard = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: Self.root + "/compose/grafana/dashboards/walship.json")))
        #expect((dashboard as? [String: Any])?["panels"] != nil)

        // Every metric the rules and the dashboard query is one walship documents (docs/monitoring.md).
        let documented = try String(contentsOfFile: Self.root + "/docs/monitoring.md", encoding: .utf8)
        let queried =
            try String(contentsOfFile: Self.root + "/compose/alert-rules.yml", encoding: .utf8)
            + String(contentsOfFile: Self.root + "/compose/grafana/dashboards/walship.json", encoding: .utf8)
        for metric in Set(queried.matches(of: /walship_[a-z_]+/).map { String($0.output) }) {
            #expect(documented.contains("`\(metric)`"), "\(metric) is queried but not a documented metric")
        }
    }

    /// What the compose stack's first start sets up also works on every later start, and lets the other
    /// containers in: run here with a directory standing in for each volume.
    @Test func composeStartsAgainAndThePrimaryTakesReplicationConnections() throws {
        let compose = try #require(try yamlAsJSON(Self.root + "/compose/compose.yaml") as? [String: Any])
        let services = try #require(compose["services"] as? [String: [String: Any]])
        let scratch = NSTemporaryDirectory() + "walship-compose-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.createDirectory(atPath: scratch + "/bin", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: scratch + "/bin/walship", withDestinationPath: IT.walshipBinary)
        let path = scratch + "/bin:" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")

        // The certificates: made on the first start, left alone on the next (certs init refuses to overwrite).
        let entrypoint = try #require(services["certs"]?["entrypoint"] as? [String])
        #expect(entrypoint.first == "sh" && entrypoint.count == 3)
        let script = entrypoint[2].replacingOccurrences(of: "/certs", with: scratch + "/certs")
        _ = try run("/bin/sh", ["-c", script], environment: ["PATH": path])
        let ca = try String(contentsOfFile: scratch + "/certs/link/ca.crt", encoding: .utf8)
        let again = try run("/bin/sh", ["-c", script], environment: ["PATH": path], check: false)
        #expect(again.status == 0, "the certs service fails on a second start: \(again.error)")
        #expect(try String(contentsOfFile: scratch + "/certs/link/ca.crt", encoding: .utf8) == ca)

        // The primary's init script adds a replication line to the pg_hba.conf the image creates.
        let volumes = try #require(services["primary"]?["volumes"] as? [String])
        let mount = try #require(volumes.first { $0.contains("/docker-entrypoint-initdb.d/") })
        let local = Self.root + "/compose/" + String(mount.split(separator: ":")[0].dropFirst(2))
        try FileManager.default.createDirectory(atPath: scratch + "/pgdata", withIntermediateDirectories: true)
        try "host all all all scram-sha-256\n".write(toFile: scratch + "/pgdata/pg_hba.conf", atomically: true, encoding: .utf8)
        _ = try run("/bin/sh", ["-c", ". \"$0\"", local], environment: ["PGDATA": scratch + "/pgdata"])
        let hba = try String(contentsOfFile: scratch + "/pgdata/pg_hba.conf", encoding: .utf8)
        #expect(hba.contains(/(?m)^host\s+replication\s+all\s+all\s+scram-sha-256$/), "\(hba)")
    }

    /// `make install` pulls in only the build dependencies and leaves a running PostgreSQL cluster running: its
    /// dependency step runs for real here (installing what is missing), the build and copy only as `make -n`.
    @Test(.enabled(if: IT.pgBin != nil)) func makeInstallLeavesARunningClusterRunning() throws {
        let fixture = try Fixture("make-install")
        defer { fixture.tearDown() }
        let cluster = try fixture.cluster("running")
        try cluster.start()
        let plan = try run("/usr/bin/make", ["-C", Self.root, "-n", "install", "DESTDIR=/nonexistent"]).output
        #expect(plan.contains("install-deps.sh --build"), "\(plan)")
        #expect(!plan.contains("install-deps.sh\n") && !plan.contains("kill-test-strays"), "\(plan)")
        #expect(!plan.contains(/pg_ctl|pg_ctlcluster|systemctl|apt-get install .*postgresql( |$)/), "\(plan)")
        try run("/usr/bin/make", ["-C", Self.root, "deps-build"], timeout: 600)
        #expect(try cluster.sql("SELECT 1") == "1", "the cluster stopped answering")
    }

    @Test func systemdUnitsUseRealOptions() throws {
        var checked = 0
        for file in ["walship-receive.service", "walship-send.service", "receive.env.example", "send.env.example"] {
            let text = try String(contentsOfFile: Self.root + "/contrib/systemd/" + file, encoding: .utf8)
                .replacingOccurrences(of: "\\\n", with: " ")
            let command = file.contains("receive") ? "receive" : "send"
            if file.hasSuffix(".service") {
                #expect(
                    text.contains("Restart=always") && text.contains("EnvironmentFile=") && text.contains("NoNewPrivileges=yes"))
                #expect(text.contains("walship \(command) --config /etc/walship/walship.toml"))
                // systemctl stop: SIGTERM, and time for walship's own bounded drain before systemd's SIGKILL.
                #expect(text.contains("KillSignal=SIGTERM"), "\(file) does not stop with SIGTERM")
                let timeout = text.firstMatch(of: /(?m)^TimeoutStopSec=(\d+)$/).flatMap { Int($0.output.1) }
                #expect(
                    timeout.map { $0 > Self.drainLimitSeconds } == true,
                    "\(file): TimeoutStopSec=\(timeout.map(String.init) ?? "unset") leaves no time for the drain's \(Self.drainLimitSeconds) s"
                )
                checked += try checkCommandLines(in: text, source: file)
            } else {
                // Every WALSHIP_ variable, set or commented out, overrides an option the unit's command has.
                let known = try options([command])
                for match in text.matches(of: /WALSHIP_([A-Z0-9_]+)=/) {
                    let option = "--" + match.output.1.lowercased().replacingOccurrences(of: "_", with: "-")
                    #expect(known.contains(option), "\(file): walship \(command) has no option \(option)")
                    checked += 1
                }
            }
        }
        #expect(checked >= 6, "only \(checked) options checked")
    }

    /// Scheduled base backups: a oneshot service the timer starts (neither enabled by installing them), whose command
    /// is real and takes its settings from backup.env, every variable of which the example sets.
    @Test func backupTimerRunsARealBackupCommandOnlyWhenOneIsDue() throws {
        let directory = Self.root + "/contrib/systemd/"
        let service = try String(contentsOfFile: directory + "walship-backup.service", encoding: .utf8)
            .replacingOccurrences(of: "\\\n", with: " ")
        let timer = try String(contentsOfFile: directory + "walship-backup.timer", encoding: .utf8)
        let environment = try String(contentsOfFile: directory + "backup.env.example", encoding: .utf8)
        #expect(service.contains("Type=oneshot") && service.contains("User=postgres"))
        #expect(service.contains("EnvironmentFile=/etc/walship/backup.env") && service.contains("NoNewPrivileges=yes"))
        #expect(service.contains("--if-older-than ${WALSHIP_IF_OLDER_THAN}"), "the timer would take a backup every run")
        // Started by the timer only: no [Install] of its own; the default TimeoutStartSec (90 s) would kill a backup.
        #expect(!service.contains("[Install]"))
        #expect(service.firstMatch(of: /(?m)^TimeoutStartSec=\d+h$/) != nil)
        #expect(try checkCommandLines(in: service, source: "walship-backup.service") >= 6)
        #expect(timer.contains("OnCalendar=") && timer.contains("Persistent=true") && timer.contains("WantedBy=timers.target"))
        // The variables the command line uses are set in the example, each an option of walship backup.
        let known = try options(["backup"])
        let set = Set(environment.matches(of: /(?m)^WALSHIP_([A-Z0-9_]+)=/).map { String($0.output.1) })
        for used in service.matches(of: /\$\{WALSHIP_([A-Z0-9_]+)\}/).map({ String($0.output.1) }) {
            #expect(set.contains(used), "backup.env.example does not set WALSHIP_\(used)")
        }
        for name in set {
            let option = "--" + name.lowercased().replacingOccurrences(of: "_", with: "-")
            #expect(known.contains(option), "backup.env.example: walship backup has no option \(option)")
        }
        #expect(set.count >= 4)
    }

    /// The shipped example configuration uses only real keys (each table's keys are options of its command,
    /// top-level keys options of both) and is accepted whole by the commands that read it.
    @Test func exampleConfigurationUsesRealKeys() throws {
        let path = Self.root + "/contrib/walship.toml.example"
        let r = try run(
            "/usr/bin/python3",
            ["-c", "import sys, json, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))", path])
        let document = try #require(try JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any])
        let send = try options(["send"]), receive = try options(["receive"])
        var checked = 0
        for (key, value) in document {
            if let table = value as? [String: Any] {
                let known = key == "send" ? send : key == "receive" ? receive : []
                #expect(!known.isEmpty, "unknown table [\(key)]")
                for option in table.keys {
                    #expect(known.contains("--" + option), "[\(key)] \(option) is not an option of walship \(key)")
                    checked += 1
                }
            } else {
                #expect(
                    send.contains("--" + key) && receive.contains("--" + key),
                    "top-level \(key) is not an option of both commands")
                checked += 1
            }
        }
        #expect(checked >= 20, "only \(checked) keys checked")

        // walship check parses it as the commands do (their own validation included); the endpoints are
        // pointed at closed loopback ports so nothing leaves this machine.
        let check = try run(
            IT.walshipBinary, ["check", "--config", path, "--role", "send"], timeout: 60,
            environment: ["WALSHIP_SOURCE": "host=127.0.0.1 port=1 connect_timeout=5", "WALSHIP_TO": "127.0.0.1:1"], check: false)
        #expect(check.output.hasPrefix("ok    configuration: \(path) gives walship send"), "\(check.output)\(check.error)")
        #expect(check.status == 1 && check.output.contains("FAIL  source:"), "\(check.output)")
        for role in ["send", "receive"] {
            let help = try run(IT.walshipBinary, [role, "--config", path, "--help"], timeout: 30, check: false)
            #expect(help.status == 0, "walship \(role) --config rejects the example: \(help.error)")
        }
    }
}
