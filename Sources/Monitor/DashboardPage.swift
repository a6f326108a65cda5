/// The self-contained HTML dashboard served on `GET /` (no CDN: it must work offline at a DR site).
public enum DashboardPage {
    public static let html: String = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>walship</title>
        <style>
        :root{--fg:#1f2328;--mut:#57606a;--bg:#f3f4f6;--card:#fff;--line:#d0d7de;--ok:#1a7f37;--warn:#9a6700;--crit:#c62828;--unk:#6e7781;--sec:#0969da;--byt:#bc4c00}
        *{box-sizing:border-box}
        body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
        header{background:#24292f;color:#fff;padding:12px 16px}
        header .top{display:flex;flex-wrap:wrap;align-items:center;gap:8px 16px}
        h1{font-size:1.3em;margin:0}
        h2{font-size:1.15em;margin:0 0 8px}
        h3{font-size:1em;margin:14px 0 6px;color:var(--mut)}
        main{padding:12px;display:flex;flex-direction:column;gap:12px;max-width:1200px;margin:0 auto}
        .card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;overflow:hidden}
        .facts{display:flex;flex-wrap:wrap;gap:6px 20px}
        .fact .k{color:var(--mut);margin-right:6px;font-size:.9em}
        header .fact .k{color:#c9d1d9}
        .fact .v{font-weight:600;word-break:break-all}
        .badge{display:inline-block;padding:2px 10px;border-radius:999px;font-weight:700;text-transform:uppercase;font-size:.85em;color:#fff;background:var(--unk)}
        .badge.ok{background:var(--ok)}.badge.warning{background:var(--warn)}.badge.critical{background:var(--crit)}.badge.info{background:var(--sec)}
        .good{color:var(--ok)}.bad{color:var(--crit)}.warn{color:var(--warn)}
        #reasons{margin:6px 0 0;padding-left:20px}
        #updatedbox{margin-left:auto;font-size:.9em;color:#c9d1d9}
        .banner{background:#ffebe9;border:1px solid var(--crit);color:#82071e;padding:8px 12px;border-radius:6px;font-weight:600}
        #error{margin:12px 12px 0}
        .fence{margin-top:8px;background:#fff8c5;border-color:var(--warn);color:#4d2d00}
        .chain{display:flex;flex-wrap:wrap;align-items:stretch;gap:6px}
        .stage{flex:1 1 140px;min-width:130px;border:2px solid var(--sec);border-radius:8px;padding:6px 10px;background:#f6f8ff}
        .stage.na{border-color:var(--line);background:#f3f4f6;color:var(--unk)}
        .stage-name{font-weight:700;text-transform:uppercase;font-size:.8em;letter-spacing:.05em}
        .lsn{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.05em;font-weight:600}
        .lag{font-size:.9em;color:var(--mut)}.lag span{margin-right:8px;white-space:nowrap}.lag .k{font-size:.85em}
        .stage.na .lag{color:var(--unk)}
        .arrow{align-self:center;font-size:1.4em;color:var(--mut)}
        .chart svg{display:block;max-width:100%;height:auto}
        .chart text{font-size:11px;fill:var(--mut)}
        .chart .grid{stroke:#e5e7eb}.chart .frame{stroke:#8c959f;fill:none}
        .chart .ls{stroke:var(--sec);fill:none;stroke-width:2}.chart .lb{stroke:var(--byt);fill:none;stroke-width:2;stroke-dasharray:6 4}
        .chart .ps{fill:var(--sec)}.chart .pb{fill:var(--byt)}
        .legend{font-size:.85em;color:var(--mut);display:flex;flex-wrap:wrap;gap:4px 16px}
        .legend .s{color:var(--sec);font-weight:700}.legend .b{color:var(--byt);font-weight:700}
        .nodata{padding:24px;text-align:center;color:var(--unk);border:1px dashed var(--line);border-radius:6px}
        .tablewrap{overflow-x:auto}
        table{border-collapse:collapse;width:100%;font-size:.93em}
        th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
        th{color:var(--mut);font-weight:600}
        .none{color:var(--unk);margin:4px 0}
        #spool:empty,#sender:empty{display:none}
        .bar{height:12px;border-radius:6px;background:#e5e7eb;overflow:hidden;margin-top:8px;max-width:480px}
        .bar .fill{height:100%;background:var(--sec)}.bar .fill.crit{background:var(--crit)}
        @media (max-width:600px){body{font-size:14px}.arrow{display:none}.stage{flex-basis:100%}}
        </style>
        </head>
        <body>
        <header>
        <div class="top"><h1>walship <span id="role">&hellip;</span></h1><span id="health" class="badge unknown">unknown</span>
        <span id="updatedbox">Updated <time id="updated">never</time></span></div>
        <div id="facts" class="facts"></div>
        <ul id="reasons"></ul>
        </header>
        <div id="error" class="banner" hidden></div>
        <main>
        <div id="systems"></div>
        <section class="card"><h2>Active alerts</h2><div id="alerts"><p class="none">loading&hellip;</p></div></section>
        <div id="spool"></div>
        <div id="sender"></div>
        </main>
        <script>
        (function () {
          'use strict';
          var loaded = false, SVGNS = 'http://www.w3.org/2000/svg';
          function $(id) { return document.getElementById(id); }
          function nn(v) { return v !== null && v !== undefined; }
          function el(tag, cls, text) {
            var e = document.createElement(tag);
            if (cls) e.className = cls;
            if (nn(text)) e.textContent = String(text);
            return e;
          }
          function add(p, c) { p.appendChild(c); return c; }
          function fmtBytes(n) {
            if (!nn(n) || isNaN(Number(n))) return 'n/a';
            var u = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'], a = Math.abs(Number(n)), i = 0;
            while (a >= 1024 && i < u.length - 1) { a /= 1024; i++; }
            return (n < 0 ? '-' : '') + (i === 0 ? Math.round(a) : a.toFixed(1)) + ' ' + u[i];
          }
          function fmtSecs(s) {
            if (!nn(s) || isNaN(Number(s))) return 'n/a';
            var t = Math.abs(s) < 100 ? Number(s).toFixed(1) : String(Math.round(s));
            return (Number(t) === 0 ? t.replace('-', '') : t) + ' s';
          }
          function human(s) {
            if (!nn(s) || Math.abs(s) < 100) return '';
            var a = Math.abs(s);
            return a < 3600 ? (a / 60).toFixed(1) + ' min' : a < 86400 ? (a / 3600).toFixed(1) + ' h' : (a / 86400).toFixed(1) + ' d';
          }
          function yesno(b) { return nn(b) ? (b ? 'yes' : 'no') : 'n/a'; }
          function pad(n) { return (n < 10 ? '0' : '') + n; }
          function parseDate(s) { if (!s) return null; var d = new Date(s); return isNaN(d.getTime()) ? null : d; }
          function clock(d) { return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); }
          function fmtTime(s) {
            var d = parseDate(s);
            return d ? d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + clock(d) : 'n/a';
          }
          function fact(p, label, value, cls) {
            var d = add(p, el('div', 'fact'));
            add(d, el('span', 'k', label));
            return add(d, el('span', 'v' + (cls ? ' ' + cls : ''), nn(value) ? value : 'n/a'));
          }
          function table(p, heads, rows) {
            if (!rows.length) { add(p, el('p', 'none', 'none')); return; }
            var t = add(add(p, el('div', 'tablewrap')), el('table'));
            var hr = add(add(t, el('thead')), el('tr'));
            heads.forEach(function (h) { add(hr, el('th', null, h)); });
            var tb = add(t, el('tbody'));
            rows.forEach(function (r) {
              var tr = add(tb, el('tr'));
              r.forEach(function (c) {
                if (c && c.nodeType) add(add(tr, el('td')), c); else add(tr, el('td', null, nn(c) ? c : '\u2014'));
              });
            });
          }
          function badge(status) {
            var known = ['ok', 'warning', 'critical', 'info'].indexOf(status) >= 0;
            return el('span', 'badge ' + (known ? status : 'unknown'), status || 'unknown');
          }

          function renderHeader(doc) {
            $('role').textContent = doc.role || '?';
            var f = $('facts'); f.textContent = '';
            fact(f, 'Host', doc.host);
            fact(f, 'State', (doc.state || '?') + (doc.stateSince ? ' since ' + fmtTime(doc.stateSince) : ''));
            var p = doc.process || {};
            fact(f, 'Memory', fmtBytes(p.residentMemoryBytes));
            fact(f, 'PID', p.pid);
            fact(f, 'Version', doc.version);
            if (doc.receiver) {
              fact(f, 'Listen', doc.receiver.listen);
              if (doc.receiver.standbyListen) fact(f, 'Standby listen', doc.receiver.standbyListen);
            }
            var h = doc.health || {}, st = ['ok', 'warning', 'critical'].indexOf(h.status) >= 0 ? h.status : 'unknown';
            var b = $('health'); b.className = 'badge ' + st; b.textContent = h.status || 'unknown';
            var r = $('reasons'); r.textContent = '';
            (h.reasons || []).forEach(function (x) { add(r, el('li', null, x)); });
            if (doc.lastError) add(r, el('li', null, 'Last error: ' + doc.lastError));
            document.title = 'walship ' + (doc.role || '') + ' \u2014 ' + st;
          }

          function chart(p, hist) {
            var box = add(p, el('div', 'chart'));
            var pts = (hist || []).map(function (h) {
              var d = parseDate(h.at);
              return { t: d ? d.getTime() : NaN, b: Number(h.bytes) || 0, s: Number(h.seconds) || 0 };
            }).filter(function (x) { return !isNaN(x.t); }).sort(function (a, b) { return a.t - b.t; });
            if (!pts.length) { add(box, el('div', 'nodata', 'no data yet')); return; }
            var W = Math.max(280, box.clientWidth || 600), H = 220, L = 58, R = 70, T = 12, B = 30;
            var pw = W - L - R, ph = H - T - B;
            var t1 = pts[pts.length - 1].t, t0 = pts[0].t;
            if (t1 - t0 < 1000) t0 = t1 - 60000;
            var ss = pts.map(function (x) { return x.s; }), bs = pts.map(function (x) { return x.b; });
            var smin = Math.min.apply(null, ss), smax = Math.max.apply(null, ss);
            var bmin = Math.min.apply(null, bs), bmax = Math.max.apply(null, bs);
            var sTop = smax > 0 ? smax * 1.1 : 1, bTop = bmax > 0 ? bmax * 1.1 : 1024;
            function x(t) { return L + (t - t0) / (t1 - t0) * pw; }
            function ys(v) { return T + ph - Math.max(0, v) / sTop * ph; }
            function yb(v) { return T + ph - Math.max(0, v) / bTop * ph; }
            function sv(parent, tag, attrs, text) {
              var e = document.createElementNS(SVGNS, tag);
              Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
              if (nn(text)) e.textContent = String(text);
              parent.appendChild(e); return e;
            }
            var svg = sv(box, 'svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'lag over time' });
            [0, 0.5, 1].forEach(function (f) {
              var y = T + ph - f * ph;
              sv(svg, 'line', { 'class': 'grid', x1: L, x2: L + pw, y1: y, y2: y });
              sv(svg, 'text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, fmtSecs(sTop * f));
              sv(svg, 'text', { x: L + pw + 6, y: y + 4, 'text-anchor': 'start' }, fmtBytes(bTop * f));
            });
            sv(svg, 'rect', { 'class': 'frame', x: L, y: T, width: pw, height: ph });
            [[t0, 'start'], [(t0 + t1) / 2, 'middle'], [t1, 'end']].forEach(function (a) {
              sv(svg, 'text', { x: x(a[0]), y: H - 10, 'text-anchor': a[1] }, clock(new Date(a[0])));
            });
            sv(svg, 'polyline', { 'class': 'lb', points: pts.map(function (q) { return x(q.t) + ',' + yb(q.b); }).join(' ') });
            sv(svg, 'polyline', { 'class': 'ls', points: pts.map(function (q) { return x(q.t) + ',' + ys(q.s); }).join(' ') });
            var last = pts[pts.length - 1];
            sv(svg, 'circle', { 'class': 'pb', cx: x(last.t), cy: yb(last.b), r: 3.5 });
            sv(svg, 'circle', { 'class': 'ps', cx: x(last.t), cy: ys(last.s), r: 3.5 });
            var lg = add(box, el('div', 'legend'));
            var a = add(lg, el('span')); add(a, el('span', 's', '\u2014 seconds behind')); add(a, document.createTextNode(' (left axis): min ' + fmtSecs(smin) + ', max ' + fmtSecs(smax) + ', now ' + fmtSecs(last.s)));
            var c = add(lg, el('span')); add(c, el('span', 'b', '- - bytes behind')); add(c, document.createTextNode(' (right axis): min ' + fmtBytes(bmin) + ', max ' + fmtBytes(bmax) + ', now ' + fmtBytes(last.b)));
            add(lg, el('span', null, pts.length + ' point' + (pts.length === 1 ? '' : 's')));
          }

          function renderSystem(root, sys, doc) {
            var s = add(root, el('section', 'card system'));
            add(s, el('h2', null, 'System ' + (sys.systemIdentifier || 'unknown') + (nn(sys.timeline) ? ' \u00b7 timeline ' + sys.timeline : '')));
            var l = sys.link || {}, f = add(s, el('div', 'facts'));
            fact(f, 'Link', l.connected ? 'connected' : 'not connected', l.connected ? 'good' : 'bad');
            if (!l.connected && l.disconnectedSince) fact(f, 'Down since', fmtTime(l.disconnectedSince), 'bad');
            if (l.peer) fact(f, 'Peer', l.peer);
            if (l.senderName) fact(f, 'Sender', l.senderName);
            fact(f, 'Synchronous', yesno(l.synchronous));
            fact(f, 'Last message', nn(l.lastMessageAgeSeconds) ? fmtSecs(l.lastMessageAgeSeconds) + ' ago' : 'n/a');
            if (nn(l.lastPrimaryMessageAgeSeconds)) fact(f, 'Last from primary', fmtSecs(l.lastPrimaryMessageAgeSeconds) + ' ago');
            if (nn(sys.clockSkewSeconds)) fact(f, 'Clock skew', fmtSecs(sys.clockSkewSeconds));
            if (sys.newestBackup) fact(f, 'Newest backup', sys.newestBackup.id + ', ' + fmtTime(sys.newestBackup.takenAt));
            else if (doc.role === 'receiver' && nn(sys.timeline)) fact(f, 'Newest backup', 'none complete', 'bad');
            if (sys.fence) {
              var fe = sys.fence;
              add(s, el('div', 'banner fence', 'FENCED: the DR replica was promoted at ' + fmtTime(fe.promotedAt) +
                (nn(fe.promotedTimeline) ? ' (timeline ' + fe.promotedTimeline +
                  (nn(fe.parentTimeline) && fe.switchPoint ? ', from timeline ' + fe.parentTimeline + ' at ' + fe.switchPoint : '') + ')' : '') +
                (fe.replayedLSN ? ', replayed up to ' + fe.replayedLSN : '') + '. WAL from the old primary is refused' +
                (fe.lineageRecorded === false ? ', and the new primary\'s too: the fence records no promoted timeline history.' : '.')));
            }
            add(s, el('h3', null, 'Replication chain'));
            var c = add(s, el('div', 'chain'));
            (sys.chain || []).forEach(function (st, i) {
              if (i > 0) add(c, el('div', 'arrow', '\u2192'));
              var na = !nn(st.lsn), b = add(c, el('div', 'stage' + (na ? ' na' : '')));
              b.setAttribute('data-stage', st.name);
              add(b, el('div', 'stage-name', st.name));
              add(b, el('div', 'lsn', na ? 'n/a' : st.lsn));
              var lag = add(b, el('div', 'lag'));
              add(lag, el('span', 'k', 'behind'));
              add(lag, el('span', 'lag-bytes', na ? 'n/a' : fmtBytes(st.bytesBehind)));
              var sec = add(lag, el('span', 'lag-seconds', na ? 'n/a' : fmtSecs(st.secondsBehind)));
              if (!na && human(st.secondsBehind)) sec.title = human(st.secondsBehind);
            });
            if (!(sys.chain || []).length) add(c, el('p', 'none', 'none'));
            add(s, el('h3', null, 'Lag over time'));
            chart(s, sys.history);
            add(s, el('h3', null, 'Standbys'));
            table(s, ['Name', 'Connected', 'Replayed LSN', 'Updated'], (sys.standbys || []).map(function (sb) {
              return [sb.name, el('span', sb.connected ? 'good' : 'bad', yesno(sb.connected)), sb.replayedLSN, fmtTime(sb.updatedAt)];
            }));
          }

          function renderSpool(doc) {
            var p = $('spool'); p.textContent = '';
            var sp = doc.spool; if (!sp) return;
            var s = add(p, el('section', 'card')); add(s, el('h2', null, 'Spool'));
            var f = add(s, el('div', 'facts'));
            var pct = nn(sp.freePercent) ? sp.freePercent : (sp.totalBytes > 0 && nn(sp.freeBytes) ? sp.freeBytes / sp.totalBytes * 100 : null);
            fact(f, 'Path', sp.path);
            fact(f, 'Free', fmtBytes(sp.freeBytes) + ' of ' + fmtBytes(sp.totalBytes));
            fact(f, 'Free %', nn(pct) ? Number(pct).toFixed(1) + ' %' : 'n/a');
            fact(f, 'Used by spool files', fmtBytes(sp.usedBytes));
            if (nn(pct)) {
              var firing = (doc.alerts || []).some(function (a) { return a.condition === 'spool_free'; });
              var bar = add(s, el('div', 'bar')); bar.title = 'used ' + (100 - pct).toFixed(1) + ' %';
              add(bar, el('div', 'fill' + (firing ? ' crit' : ''))).style.width = Math.min(100, Math.max(0, 100 - pct)) + '%';
            }
          }

          function renderSender(doc) {
            var p = $('sender'); p.textContent = '';
            var sd = doc.sender; if (!sd) return;
            var s = add(p, el('section', 'card')); add(s, el('h2', null, 'Sender'));
            var f = add(s, el('div', 'facts'));
            fact(f, 'Source', sd.source);
            fact(f, 'Receiver', sd.receiver);
            if (sd.applicationName) fact(f, 'Application name', sd.applicationName);
            fact(f, 'Synchronous', yesno(sd.synchronous));
            fact(f, 'WAL sent', fmtBytes(sd.walBytesSent));
            fact(f, 'Wire sent', fmtBytes(sd.wireBytesSent));
            fact(f, 'Compression ratio', nn(sd.compressionRatio) ? Number(sd.compressionRatio).toFixed(2) + ' \u00d7' : 'n/a');
            var sl = sd.slot || {};
            add(s, el('h3', null, 'Replication slot'));
            var g = add(s, el('div', 'facts'));
            fact(g, 'Name', sl.name);
            fact(g, 'WAL status', sl.walStatus || 'n/a', sl.walStatus === 'extended' ? 'warn' : (sl.walStatus === 'unreserved' || sl.walStatus === 'lost') ? 'bad' : '');
            if (nn(sl.active)) fact(g, 'Active', yesno(sl.active), sl.active ? 'good' : 'bad');
            if (sl.restartLSN) fact(g, 'Restart LSN', sl.restartLSN);
            fact(g, 'Retained', fmtBytes(sl.retainedBytes));
            fact(g, 'Safe WAL size', nn(sl.safeWALSizeBytes) ? fmtBytes(sl.safeWALSizeBytes) : 'no limit');
            if (sl.checkedAt) fact(g, 'Checked', fmtTime(sl.checkedAt));
          }

          function render(doc) {
            renderHeader(doc);
            var root = $('systems'); root.textContent = '';
            (doc.systems || []).forEach(function (sys) { renderSystem(root, sys, doc); });
            if (!(doc.systems || []).length) add(add(root, el('section', 'card')), el('p', 'none', 'no systems seen yet'));
            var al = $('alerts'); al.textContent = '';
            table(al, ['Condition', 'Severity', 'System', 'Since', 'Message'], (doc.alerts || []).map(function (a) {
              return [a.condition, badge(a.severity), a.system, fmtTime(a.since), a.message];
            }));
            renderSpool(doc);
            renderSender(doc);
          }

          function showError(text) {
            var e = $('error');
            e.textContent = text + (loaded ? ' (showing data from ' + $('updated').textContent + ')' : '');
            e.hidden = false;
          }

          function refresh() {
            var timeout = new Promise(function (_, reject) { setTimeout(function () { reject(new Error('timed out')); }, 10000); });
            Promise.race([fetch('status', {cache: 'no-store'}), timeout]).then(function (r) {
              if (!r.ok) throw new Error('HTTP ' + r.status + ' ' + r.statusText);
              return r.json();
            }).then(function (doc) {
              try { render(doc); } catch (err) { showError('cannot display walship status: ' + err.message); return; }
              var now = new Date(), u = $('updated');
              u.textContent = clock(now); u.setAttribute('datetime', now.toISOString());
              $('error').hidden = true;
              if (!loaded) { loaded = true; document.body.setAttribute('data-loaded', 'true'); }
            }, function (err) {
              showError('cannot reach walship status: ' + (err && err.message ? err.message : String(err)));
            }).then(function () { setTimeout(refresh, 2000); });
          }
          refresh();
        })();
        </script>
        </body>
        </html>
        """#
}
