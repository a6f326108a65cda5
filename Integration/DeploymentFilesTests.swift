import Foundation
import Testing

/// No container engine runs here, so the deployment files are checked against the real program: the
/// compose file and Prometheus rules parse, and every walship command line in compose/ and
/// contrib/systemd/ uses only subcommands and options `walship … --help` really has.
@Suite struct DeploymentFilesTests {
    static let root = IT.repositoryRoot

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
        let r = try run("/usr/bin/python3", ["-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))", path])
        return try JSONSerialization.jsonObject(with: Data(r.output.utf8))
    }

    @Test func composeStackUsesRealOptions() throws {
        let compose = try #require(try yamlAsJSON(Self.root + "/compose/compose.yaml") as? [String: Any])
        let services = try #require(compose["services"] as? [String: [String: Any]])
        #expect(Set(services.keys).isSuperset(of: ["primary", "sender", "receiver", "dr-standby", "prometheus", "grafana"]))
        var checked = 0
        for (name, service) in services {
            // Services built from the walship image run `walship COMMAND…` (their entrypoint).
            if let command = service["command"] as? [String], (service["image"] as? String) == "walship:local" {
                checked += try checkCommandLines(in: "walship " + command.joined(separator: " "), source: "compose service \(name)")
            }
            if let entrypoint = service["entrypoint"] as? [String] {
                checked += try checkCommandLines(in: entrypoint.joined(separator: " "), source: "compose service \(name)")
            }
        }
        #expect(checked > 30, "only \(checked) options checked")
        let rules = try #require(try yamlAsJSON(Self.root + "/compose/alert-rules.yml") as? [String: Any])
        #expect((rules["groups"] as? [[String: Any]])?.first?["rules"] != nil)
        _ = try yamlAsJSON(Self.root + "/compose/prometheus.yml")
        let dashboard = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.root + "/compose/grafana/dashboards/walship.json")))
        #expect((dashboard as? [String: Any])?["panels"] != nil)

        // Every metric the rules and the dashboard query is one walship documents (docs/monitoring.md).
        let documented = try String(contentsOfFile: Self.root + "/docs/monitoring.md", encoding: .utf8)
        let queried = try String(contentsOfFile: Self.root + "/compose/alert-rules.yml", encoding: .utf8)
            + String(contentsOfFile: Self.root + "/compose/grafana/dashboards/walship.json", encoding: .utf8)
        for metric in Set(queried.matches(of: /walship_[a-z_]+/).map { String($0.output) }) {
            #expect(documented.contains("`\(metric)`"), "\(metric) is queried but not a documented metric")
        }
    }

    @Test func systemdUnitsUseRealOptions() throws {
        var checked = 0
        for file in ["walship-receive.service", "walship-send.service", "receive.env.example", "send.env.example"] {
            let text = try String(contentsOfFile: Self.root + "/contrib/systemd/" + file, encoding: .utf8)
                .replacingOccurrences(of: "\\\n", with: " ")
            if file.hasSuffix(".service") {
                #expect(text.contains("Restart=always") && text.contains("EnvironmentFile=") && text.contains("NoNewPrivileges=yes"))
                checked += try checkCommandLines(in: text, source: file)
            } else {
                // The *_OPTIONS lines are handed to the command of the matching unit.
                let command = file.hasPrefix("receive") ? "receive" : "send"
                for line in text.split(separator: "\n") where line.contains("_OPTIONS=") {
                    checked += try checkCommandLines(in: "walship \(command) " + line.split(separator: "=", maxSplits: 1)[1], source: file)
                }
            }
        }
        #expect(checked > 20, "only \(checked) options checked")
    }
}
