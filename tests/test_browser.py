"""The web client and TURN, in the real Chromium, against a real coturn and the real
server (``python -m liveloop serve``).

Pages are driven by their accessible names (the page's contract). Every wait is a
condition polled in the page with a deadline (``until``), never a fixed sleep.

Chromium runs with a fake camera and microphone. Permission is given per browser context
(Playwright's ``permissions``) rather than by ``--use-fake-ui-for-media-stream``, which
would grant every context: so one browser serves both the pages that may use the camera
and the one that is refused it.
"""

from __future__ import annotations

import base64
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from liveloop.ice import turn_password, turn_username

from .browser import CHROMIUM, CHROMIUM_ARGS, Coturn, Liveloop, start_coturn, start_liveloop

playwright_api = pytest.importorskip("playwright.sync_api")
Page = Any

pytestmark = pytest.mark.timeout(180)

WAIT = 20_000
"""Milliseconds any one condition may take to come true."""
REQUEST_ROOM_PER = 3
"""The server's request-room limit in these tests (seconds): short, so the rate-limited
button is seen to wait and come back within one test."""
SCREENSHOT = Path(__file__).parent.parent / "docs" / "images" / "call.png"


# -- services ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def coturn(workdir: Path) -> Iterator[Coturn]:
    with start_coturn(workdir) as server:
        yield server


@pytest.fixture(scope="module")
def server(workdir: Path, coturn: Coturn) -> Iterator[Liveloop]:
    (workdir / "turn-secret").write_text(coturn.secret + "\n")
    env = {
        "LIVELOOP_TURN_URLS": coturn.url,
        "LIVELOOP_TURN_SECRET_FILE": str(workdir / "turn-secret"),
        "LIVELOOP_REQUEST_ROOM_PER": str(REQUEST_ROOM_PER),
    }
    with start_liveloop(workdir, env=env) as running:
        yield running
    assert coturn.secret not in running.log.read_text()  # never logged


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `.ci/run` installs it (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser: Any, url: str, *, media: bool = True) -> Page:
    """A page in a context of its own (its own storage), camera allowed or not."""
    context = browser.new_context(
        permissions=["camera", "microphone"] if media else [],
        # Playwright's polling evaluates code the page's CSP (rightly) forbids.
        bypass_csp=True, viewport={"width": 1000, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    page.goto(url)
    return page


def until(page: Page, predicate: str, arg: Any = None, timeout: float = WAIT) -> Any:
    """Poll the JS ``predicate`` (a function of ``arg``, maybe async) in the page every
    100 ms until it returns something truthy, and return that; fail after ``timeout`` ms."""
    return page.evaluate(
        f"""async (arg) => {{
          const predicate = {predicate};
          const deadline = Date.now() + {timeout};
          for (;;) {{
            const value = await predicate(arg);
            if (value) return value;
            if (Date.now() > deadline) throw new Error("timed out waiting for " + {predicate!r});
            await new Promise((resolve) => setTimeout(resolve, 100));
          }}
        }}""", arg)


# -- what the tests look at in a page ---------------------------------------------------

STATS = """async () => {
  const call = window.liveloop.call;
  if (!call) return null;
  const byId = new Map();
  (await call.pc.getStats()).forEach((s) => byId.set(s.id, s));
  const out = {video: 0, audio: 0, energy: 0, local: null, remote: null,
               attempt: call.attempt, policy: call.config.iceTransportPolicy};
  for (const s of byId.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") out.video = s.framesDecoded ?? 0;
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.audio = (s.totalSamplesReceived ?? 0) - (s.concealedSamples ?? 0);
      out.energy = s.totalAudioEnergy ?? 0;
    }
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = byId.get(s.selectedCandidatePairId);
      out.local = byId.get(pair.localCandidateId)?.candidateType ?? null;
      out.remote = byId.get(pair.remoteCandidateId)?.candidateType ?? null;
    }
  }
  return out;
}"""

# The mean brightness (0-255) of what a <video> shows now, or -1 without a frame.
BRIGHTNESS = """(video) => {
  if (!video.videoWidth || video.paused) return -1;
  const canvas = document.createElement("canvas");
  canvas.width = 64; canvas.height = 48;
  const g = canvas.getContext("2d");
  g.drawImage(video, 0, 0, 64, 48);
  const data = g.getImageData(0, 0, 64, 48).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += data[i] + data[i + 1] + data[i + 2];
  return sum / (data.length / 4) / 3;
}"""


def stats_until(page: Page, condition: str, timeout: float = WAIT) -> dict[str, Any]:
    """Poll the call's stats until ``condition`` (JS over ``s``) holds; the stats."""
    found: dict[str, Any] = until(
        page, f"async () => {{ const s = await ({STATS})(); return s && ({condition}) && s; }}",
        timeout=timeout)
    return found


def media_flows(page: Page) -> dict[str, Any]:
    """Video frames and audio samples decoded from the partner, and the pair in use."""
    return stats_until(page, "s.video > 5 && s.audio > 0 && s.local !== null")


def video(page: Page, label: str) -> Any:
    """The element of the video whose accessible name is ``label``."""
    return page.get_by_label(label, exact=True).element_handle()


def shows_video(page: Page, label: str = "Stranger") -> float:
    """Wait until the video named ``label`` plays frames that are not black."""
    brightness: float = until(page, f"(v) => {{ const b = ({BRIGHTNESS})(v); "
                                    "return b > 30 && b; }", video(page, label))
    return brightness


def shows_black(page: Page, label: str = "Stranger") -> None:
    until(page, f"(v) => {{ const b = ({BRIGHTNESS})(v); return b >= 0 && b < 8; }}",
          video(page, label))


def state(page: Page) -> str:
    return str(page.get_by_role("status").text_content())


def start(page: Page, name: str) -> None:
    page.get_by_label("Name", exact=True).fill(name)
    button = page.get_by_role("button", name="Start", exact=True)
    playwright_api.expect(button).to_be_enabled(timeout=WAIT)
    button.click()


def in_call_with(page: Page, name: str) -> None:
    playwright_api.expect(page.get_by_role("status")).to_contain_text(
        f"In a call with {name}", timeout=WAIT)


def press(page: Page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()


# -- TURN --------------------------------------------------------------------------------


def test_relay_only_call_through_coturn(browser: Any, server: Liveloop, coturn: Coturn
                                        ) -> None:
    """Both pages relay-only, with only what get-ice-servers gave them: media both ways,
    the selected pair relay on both sides."""
    url = f"{server.url}/app/?policy=relay"
    ann, bob = open_page(browser, url), open_page(browser, url)
    start(ann, "Ann")
    start(bob, "Bob")
    for page in (ann, bob):
        flows = media_flows(page)
        assert (flows["local"], flows["remote"]) == ("relay", "relay"), flows
        servers = page.evaluate("window.liveloop.call.config")
        assert servers["iceTransportPolicy"] == "relay"
        (turn,) = servers["iceServers"]
        assert turn["urls"] == [coturn.url]
        expiry, connection_id = turn["username"].split(":")
        assert 0 < int(expiry) - time.time() <= 600
        assert turn["credential"] == turn_password(coturn.secret.encode(), turn["username"])
        assert connection_id not in ("Ann", "Bob")
        assert not page.errors
    for page in (ann, bob):
        page.context.close()


GATHER = """async ([servers, timeout]) => {
  const pc = new RTCPeerConnection({iceServers: servers, iceTransportPolicy: "relay"});
  pc.createDataChannel("probe");
  const types = [];
  const done = new Promise((resolve) => {
    pc.onicecandidate = (e) => e.candidate ? types.push(e.candidate.type) : resolve();
    setTimeout(resolve, timeout);
  });
  await pc.setLocalDescription(await pc.createOffer());
  await done;
  const state = pc.iceGatheringState;
  pc.close();
  return {types, state};
}"""


def test_coturn_refuses_expired_and_wrongly_signed_credentials(
        browser: Any, server: Liveloop, coturn: Coturn) -> None:
    page = open_page(browser, f"{server.url}/")
    now = math.floor(time.time())

    def gather(expiry: int, secret: str) -> dict[str, Any]:
        username = turn_username(expiry, "probe")
        servers = [{"urls": [coturn.url], "username": username,
                    "credential": turn_password(secret.encode(), username)}]
        result: dict[str, Any] = page.evaluate(GATHER, [servers, WAIT])
        return result

    valid = gather(now + 600, coturn.secret)
    assert valid == {"types": ["relay"], "state": "complete"}  # the probe can see a relay
    # coturn accepts several secrets at once: what rotating the secret relies on.
    assert gather(now + 600, coturn.next_secret) == valid
    for refused in (gather(now - 60, coturn.secret), gather(now + 600, "not-the-secret")):
        assert refused == {"types": [], "state": "complete"}
    page.context.close()


# -- the web client ----------------------------------------------------------------------


def test_web_client_end_to_end(browser: Any, server: Liveloop, tmp_path: Path) -> None:
    ann = open_page(browser, f"{server.url}/app/")
    bob = open_page(browser, f"{server.url}/app/")
    start(ann, "Ann")
    playwright_api.expect(ann.get_by_role("status")).to_have_text("Waiting for someone…")
    start(bob, "Bob")
    in_call_with(ann, "Bob")
    in_call_with(bob, "Ann")
    for page in (ann, bob):
        media_flows(page)
        shows_video(page)
        shows_video(page, "You")
    playwright_api.expect(ann.get_by_role("img", name="Bob's picture")).to_be_visible()

    # chat, both ways
    ann.get_by_label("Message", exact=True).fill("Hello Bob")
    press(ann, "Send")
    playwright_api.expect(bob.get_by_role("list", name="Chat messages")).to_contain_text(
        "Ann: Hello Bob", timeout=WAIT)
    bob.get_by_label("Message", exact=True).fill("Hi Ann")
    bob.get_by_label("Message", exact=True).press("Enter")
    playwright_api.expect(ann.get_by_role("list", name="Chat messages")).to_contain_text(
        "Bob: Hi Ann", timeout=WAIT)
    playwright_api.expect(ann.get_by_role("list", name="Chat messages")).to_contain_text(
        "You: Hello Bob")
    take_screenshot(browser, ann, bob, tmp_path)

    # Camera off: Bob sees black; on again: the picture is back. The button keeps its
    # name and says its state with aria-pressed.
    camera = ann.get_by_role("button", name="Camera off", exact=True)
    camera.click()
    playwright_api.expect(camera).to_have_attribute("aria-pressed", "true")
    shows_black(bob)
    camera.click()
    playwright_api.expect(camera).to_have_attribute("aria-pressed", "false")
    shows_video(bob)

    # Mute: Bob's audio energy stops growing (the fake microphone beeps); unmuted, it
    # grows again.
    mute = ann.get_by_role("button", name="Mute", exact=True)
    mute.click()
    playwright_api.expect(mute).to_have_attribute("aria-pressed", "true")
    assert_silence(bob)
    mute.click()
    before = stats_until(bob, "true")["energy"]
    stats_until(bob, f"s.energy > {before} + 0.001")

    # Next: Bob is told and waits; a third page is matched; Stop leaves.
    next_call(ann)
    playwright_api.expect(bob.get_by_role("status")).to_have_text(
        "Ann left. Waiting for someone new…", timeout=WAIT)
    carl = open_page(browser, f"{server.url}/app/")
    start(carl, "Carl")
    in_call_with(carl, "Ann")  # Ann has waited longest; Ann and Bob are in cooldown
    in_call_with(ann, "Carl")
    press(carl, "Stop")
    playwright_api.expect(carl.get_by_role("status")).to_have_text(
        "You left. Press Start to meet someone.")
    playwright_api.expect(ann.get_by_role("status")).to_contain_text(
        "Carl left", timeout=WAIT)

    # Start again at once: rate-limited; the button says when and waits until then.
    start_button = carl.get_by_role("button", name="Start", exact=True)
    start_button.click()
    playwright_api.expect(carl.get_by_role("alert").filter(has_text="Too fast")).to_be_visible(
        timeout=WAIT)
    playwright_api.expect(start_button).to_be_disabled()
    playwright_api.expect(carl.locator("#wait")).to_contain_text("available again in")
    playwright_api.expect(start_button).to_be_enabled(timeout=(REQUEST_ROOM_PER + 5) * 1000)
    start_button.click()
    in_call_with(carl, "Bob")  # waiting longest; Ann came back to the queue after him
    ann.reload()  # the name is remembered by the browser
    playwright_api.expect(ann.get_by_label("Name", exact=True)).to_have_value("Ann")
    for page in (ann, bob, carl):
        assert not page.errors, page.errors
        page.context.close()


def assert_silence(page: Page) -> None:
    """The partner's audio energy stays still over 1.5 s (the fake microphone beeps
    several times a second when live), within the deadline."""
    until(page, f"""async () => {{
      const first = await ({STATS})();
      await new Promise((r) => setTimeout(r, 1500));
      const second = await ({STATS})();
      return second.energy - first.energy < 1e-6;
    }}""")


def next_call(page: Page) -> None:
    """Press Next; if the server says it is too soon, wait for the button and again."""
    press(page, "Next")
    refused = until(page, "() => window.liveloop.phase === 'waiting' ? 'ok' : "
                          "(document.getElementById('next').disabled ? 'refused' : false)")
    if refused == "refused":
        button = page.get_by_role("button", name="Next", exact=True)
        playwright_api.expect(button).to_be_enabled(timeout=(REQUEST_ROOM_PER + 5) * 1000)
        button.click()
    playwright_api.expect(page.get_by_role("status")).to_have_text("Waiting for someone…")


def take_screenshot(browser: Any, ann: Page, bob: Page, tmp_path: Path) -> None:
    """The README's picture: the two pages in their call, side by side, composed by the
    browser itself. Written to docs/images/call.png when LIVELOOP_UPDATE_SCREENSHOT=1."""
    shots = [base64.b64encode(page.screenshot()).decode() for page in (ann, bob)]
    page = browser.new_page(viewport={"width": 2000, "height": 760})
    page.set_content(
        '<body style="margin:0;display:flex;background:#888">'
        + "".join(f'<img style="width:1000px" src="data:image/png;base64,{s}">'
                  for s in shots) + "</body>")
    page.wait_for_function("[...document.images].every((i) => i.complete)")
    target = SCREENSHOT if os.environ.get("LIVELOOP_UPDATE_SCREENSHOT") == "1" \
        else tmp_path / "call.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target))
    page.close()
    assert target.stat().st_size > 10_000


def test_permission_denied_still_connects_and_chats(browser: Any, server: Liveloop) -> None:
    dana = open_page(browser, f"{server.url}/app/", media=False)
    playwright_api.expect(dana.get_by_role("alert").filter(has_text="denied")).to_be_visible(
        timeout=WAIT)
    eve = open_page(browser, f"{server.url}/app/")
    start(dana, "Dana")
    start(eve, "Eve")
    in_call_with(dana, "Eve")
    in_call_with(eve, "Dana")
    playwright_api.expect(dana.get_by_role("button", name="Mute", exact=True)).to_be_disabled()
    shows_video(dana)  # Dana still sees Eve
    dana.get_by_label("Message", exact=True).fill("No camera here")
    press(dana, "Send")
    playwright_api.expect(eve.get_by_role("list", name="Chat messages")).to_contain_text(
        "Dana: No camera here", timeout=WAIT)
    press(dana, "Stop")
    for page in (dana, eve):
        assert not page.errors, page.errors
        page.context.close()


def test_fallback_through_ice_restart_and_relay(browser: Any, server: Liveloop) -> None:
    """Fay's direct candidates are withheld (a test setting of the page): the first
    attempt and the ICE restart fail, the relay-only attempt connects."""
    fay = open_page(browser, f"{server.url}/app/?withhold=direct&ice-timeout=1500")
    gus = open_page(browser, f"{server.url}/app/")
    start(fay, "Fay")  # first in the queue: the initiator, who drives recovery
    playwright_api.expect(fay.get_by_role("status")).to_have_text("Waiting for someone…")
    start(gus, "Gus")
    flows = media_flows(fay)
    assert flows["attempt"] == 2 and flows["policy"] == "relay", flows
    assert flows["local"] == "relay", flows
    media_flows(gus)
    shows_video(gus)
    for page in (fay, gus):
        assert not page.errors, page.errors
        page.context.close()


def test_https_page_connects_over_wss_and_says_when_the_server_goes(
        browser: Any, workdir: Path, coturn: Coturn) -> None:
    """``liveloop serve --certfile --keyfile`` with a certificate made here: the page
    loads over HTTPS, its socket upgrades to WSS, and it asks for fresh TURN credentials
    before they expire (a 3 s TTL here); when the server stops, the page says it is
    reconnecting, then that the server is unreachable."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = workdir / "cert.pem", workdir / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    env = {"LIVELOOP_TURN_URLS": coturn.url, "LIVELOOP_TURN_SECRET": coturn.secret,
           "LIVELOOP_TURN_TTL": "3"}
    with start_liveloop(workdir, "--certfile", str(certfile), "--keyfile", str(keyfile),
                        name="liveloop-tls", env=env) as running:
        assert running.url.startswith("https://")
        context = browser.new_context(ignore_https_errors=True, bypass_csp=True,
                                      permissions=["camera", "microphone"])
        page = context.new_page()
        page.goto(f"{running.url}/app/")
        playwright_api.expect(page.get_by_role("status")).to_have_text(
            "Ready. Press Start to meet someone.", timeout=WAIT)
        assert page.evaluate("window.isSecureContext")
        until(page, "() => window.liveloop.socket.io.engine.transport.name === 'websocket'")
        first = until(page, "() => window.liveloop.ice?.servers[0].username")
        renewed = until(page, "(first) => { const u = window.liveloop.ice?.servers[0].username;"
                              " return u !== first && u; }", first)
        assert int(renewed.split(":")[0]) > int(first.split(":")[0])
    playwright_api.expect(page.get_by_role("status")).to_contain_text(
        "Reconnecting", timeout=WAIT)
    playwright_api.expect(page.get_by_role("status")).to_contain_text(
        "server unreachable", timeout=WAIT)
    playwright_api.expect(page.get_by_role("button", name="Start", exact=True)).to_be_disabled()
    context.close()


def test_a_page_from_another_origin_is_refused_by_default(browser: Any, server: Liveloop
                                                          ) -> None:
    """The allowed-origins setting holds for browsers: a page from elsewhere (served here
    by Playwright's routing, with the same bundle) cannot connect, on either transport."""
    bundle = (Path(__file__).parent.parent / "liveloop" / "web" / "vendor"
              / "socket.io-client" / "socket.io.esm.min.js").read_bytes()
    context = browser.new_context()
    context.route("http://elsewhere.test/io.js", lambda route: route.fulfill(
        body=bundle, content_type="text/javascript"))
    context.route("http://elsewhere.test/", lambda route: route.fulfill(
        body="<!doctype html><title>elsewhere</title>", content_type="text/html"))
    page = context.new_page()
    page.goto("http://elsewhere.test/")
    outcome = page.evaluate("""async ([url, timeout]) => {
      const { io } = await import("/io.js");
      const attempt = (transports) => new Promise((resolve) => {
        const socket = io(url, { transports, reconnection: false });
        socket.on("connect", () => { socket.close(); resolve("connected"); });
        socket.on("connect_error", () => { socket.close(); resolve("refused"); });
        setTimeout(() => resolve("no answer"), timeout);
      });
      return [await attempt(["polling"]), await attempt(["websocket"])];
    }""", [server.url, WAIT])
    assert outcome == ["refused", "refused"]
    context.close()
