// The visit page: waiting room, chat and video of one consultation (docs/api.md, "Video
// visits" and "Websocket"). Plain JavaScript, no build step.
//
// Who offers: the provider, once both are in the call (call.state "active"); the patient
// only answers. So there is no glare. Renegotiation is kept simple: any new offer replaces
// the patient's RTCPeerConnection, and the provider makes a fresh one (and a new offer)
// when the patient rejoins or the connection fails.
"use strict";

(() => {
  const cfg = JSON.parse(document.getElementById("visit-config").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const other = cfg.role === "provider" ? cfg.patient : cfg.provider;
  const CLOSE_STOP = new Set([4400, 4401, 4403]);

  const state = {
    ws: null,
    pc: null,
    local: null,
    iceServers: [],
    joined: false,
    joining: false,
    early: [], // signals that arrived while our join was still being answered
    call: null,
    lastId: 0,
    seen: new Set(),
    pendingCandidates: [],
    reconnectDelay: 1000,
  };

  // --- API ----------------------------------------------------------------------------

  async function api(method, path, body) {
    const response = await fetch(`/api/v1/${path}`, {
      method,
      credentials: "same-origin",
      headers: {
        Accept: "application/json",
        "Content-Type": "application/json",
        "X-CSRFToken": csrf,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 || response.status === 403) {
      setStatus("Your session has ended. Sign in again to continue.");
    }
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(problem.message || `HTTP ${response.status}`);
    }
    return response.status === 204 ? null : response.json();
  }

  function setStatus(text) {
    $("call-status").textContent = text;
  }

  function name(userId) {
    return cfg.names[String(userId)] || `User ${userId}`;
  }

  // --- Chat -----------------------------------------------------------------------------

  function showMessage(message) {
    if (state.seen.has(message.id)) return; // replay and live can overlap
    state.seen.add(message.id);
    state.lastId = Math.max(state.lastId, message.id);
    const item = document.createElement("li");
    item.dataset.id = message.id;
    if (message.sender === cfg.me) item.classList.add("mine");
    const from = document.createElement("span");
    from.className = "from";
    const at = new Date(message.created_at);
    from.textContent = `${name(message.sender)} · ${at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = message.deleted_at ? "(deleted)" : message.body;
    item.append(from, body);
    const list = $("messages");
    const later = [...list.children].find((li) => Number(li.dataset.id) > message.id);
    list.insertBefore(item, later || null);
    list.scrollTop = list.scrollHeight;
  }

  async function loadHistory() {
    const page = await api("GET", `consultations/${cfg.consultation}/messages?limit=50`);
    page.results.forEach(showMessage);
  }

  function clientId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  function sendMessage(event) {
    event.preventDefault();
    const input = $("message-body");
    const body = input.value.trim();
    if (!body) return;
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      showChatError("Not connected; try again in a moment.");
      return;
    }
    state.ws.send(JSON.stringify({ type: "message.send", body, client_id: clientId() }));
    input.value = "";
  }

  function showChatError(text) {
    const box = $("chat-error");
    box.textContent = text;
    box.hidden = !text;
  }

  // --- Websocket ------------------------------------------------------------------------

  async function openSocket() {
    let ticket;
    try {
      // Bound to this visit: a join link's session gets no ticket for the user's others.
      ({ ticket } = await api("POST", "ws-ticket", { consultation: cfg.consultation }));
    } catch (error) {
      return retrySocket();
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/ws/consultations/${cfg.consultation}/?ticket=${encodeURIComponent(ticket)}&after=${state.lastId}`;
    const ws = new WebSocket(url);
    state.ws = ws;
    ws.onopen = () => {
      state.reconnectDelay = 1000;
      showChatError("");
    };
    ws.onmessage = (frame) => onEvent(JSON.parse(frame.data));
    ws.onclose = (close) => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (CLOSE_STOP.has(close.code)) {
        setStatus("Disconnected from the visit. Reload the page or sign in again.");
        return;
      }
      retrySocket();
    };
  }

  function retrySocket() {
    // Back off up to 15 s; the replay (?after=) fills the gap.
    setTimeout(openSocket, state.reconnectDelay);
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, 15000);
  }

  function signal(data) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify({ type: "call.signal", to: other, data }));
    }
  }

  function onEvent(event) {
    switch (event.type) {
      case "message":
        showChatError("");
        return showMessage(event.message);
      case "call.state":
        return showCall(event.call);
      case "call.signal":
        if (event.from === other) onSignal(event.data);
        return;
      case "error":
        if (event.client_id) showChatError(event.message);
        return;
      default:
    }
  }

  // --- Waiting room -----------------------------------------------------------------------

  function inCall(call, userId) {
    return !!call && call.status !== "ended" &&
      call.participants.some((p) => p.user === userId && !p.left_at);
  }

  // Each change of a call adds a participant entry (join) or sets a left_at (leave), so
  // this grows with every change: the join's answer may arrive after a newer call.state.
  function version(call) {
    if (!call) return [-1, -1];
    const left = call.participants.filter((p) => p.left_at).length;
    return [call.id, call.participants.length * 2 + left + (call.status === "ended" ? 1 : 0)];
  }

  function older(a, b) {
    const [x, y] = [version(a), version(b)];
    return x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]);
  }

  function showCall(call) {
    if (state.call && older(call, state.call)) call = state.call;
    state.call = call;
    const list = $("participants");
    list.replaceChildren(
      ...[cfg.provider, cfg.patient].map((userId) => {
        const item = document.createElement("li");
        const here = inCall(call, userId);
        item.className = here ? "in" : "out";
        item.dataset.user = userId;
        item.textContent = `${name(userId)}${userId === cfg.me ? " (you)" : ""}: ${here ? "in the call" : "not in the call"}`;
        return item;
      }),
    );
    const otherIn = inCall(call, other);
    if (!state.joined) {
      setStatus(otherIn ? `${name(other)} is waiting for you.` : "Join when you are ready.");
    } else if (!otherIn) {
      setStatus(`Waiting for ${name(other)}…`);
      closePeer(); // they left: the next join starts a fresh connection
    } else {
      setStatus(`${name(other)} is here.`);
      if (cfg.role === "provider" && call.status === "active" && !state.pc) offer();
    }
  }

  // --- Media and the peer connection ----------------------------------------------------

  function newPeer() {
    closePeer();
    const pc = new RTCPeerConnection({
      iceServers: state.iceServers,
      iceTransportPolicy: cfg.relay_only ? "relay" : "all",
    });
    state.pc = pc;
    state.pendingCandidates = [];
    state.local.getTracks().forEach((track) => pc.addTrack(track, state.local));
    pc.onicecandidate = (e) => {
      if (e.candidate) signal({ candidate: e.candidate.toJSON() });
    };
    pc.ontrack = (e) => {
      const video = $("remote-video");
      if (video.srcObject !== e.streams[0]) {
        video.srcObject = e.streams[0];
        video.play().catch(() => {}); // allowed: the Join click was a user gesture
      }
    };
    pc.onconnectionstatechange = () => {
      if (state.pc !== pc) return;
      $("connection").textContent = `Connection: ${pc.connectionState}`;
      document.body.dataset.connection = pc.connectionState;
      if (pc.connectionState === "failed" && cfg.role === "provider") offer();
    };
    return pc;
  }

  function closePeer() {
    if (state.pc) {
      state.pc.onconnectionstatechange = null;
      state.pc.close();
      state.pc = null;
    }
    $("remote-video").srcObject = null;
    $("connection").textContent = "Not connected";
    delete document.body.dataset.connection;
  }

  async function offer() {
    const pc = newPeer();
    await pc.setLocalDescription(await pc.createOffer());
    signal({ description: pc.localDescription.toJSON() });
  }

  async function onSignal(data) {
    if (state.joining) {
      state.early.push(data);
      return;
    }
    if (!state.joined) return;
    if (data.description) {
      const description = data.description;
      if (description.type === "offer") {
        const pc = newPeer(); // a new offer replaces whatever was there
        await pc.setRemoteDescription(description);
        await pc.setLocalDescription(await pc.createAnswer());
        signal({ description: pc.localDescription.toJSON() });
      } else if (description.type === "answer" && state.pc) {
        await state.pc.setRemoteDescription(description);
      } else {
        return;
      }
      const queued = state.pendingCandidates.splice(0);
      for (const candidate of queued) await state.pc.addIceCandidate(candidate);
    } else if (data.candidate) {
      if (state.pc && state.pc.remoteDescription) {
        await state.pc.addIceCandidate(data.candidate).catch(() => {});
      } else {
        state.pendingCandidates.push(data.candidate);
      }
    }
  }

  async function join() {
    $("join").disabled = true;
    try {
      if (!state.local) {
        state.local = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        $("local-video").srcObject = state.local;
      }
      state.joining = true;
      // The other side may offer as soon as the server has us in: before this answers.
      const answer = await api("POST", `consultations/${cfg.consultation}/call`);
      state.iceServers = answer.ice_servers;
      state.joined = true;
      $("camera").disabled = $("microphone").disabled = $("leave").disabled = false;
      showCall(answer.call);
    } catch (error) {
      setStatus(`Could not join: ${error.message}`);
      $("join").disabled = false;
    } finally {
      state.joining = false;
      for (const data of state.early.splice(0)) await onSignal(data);
    }
  }

  async function leave() {
    state.joined = false;
    closePeer();
    if (state.local) state.local.getTracks().forEach((track) => track.stop());
    state.local = null;
    $("local-video").srcObject = null;
    $("camera").disabled = $("microphone").disabled = $("leave").disabled = true;
    // The next join gets a new camera and microphone, both on.
    showToggle($("camera"), "Camera", true);
    showToggle($("microphone"), "Microphone", true);
    $("join").disabled = false;
    try {
      await api("DELETE", `consultations/${cfg.consultation}/call`);
    } finally {
      showCall(state.call); // back in the waiting room (call.state brings the rest)
    }
  }

  function toggle(kind, button, label) {
    if (!state.local) return;
    const tracks = kind === "video" ? state.local.getVideoTracks() : state.local.getAudioTracks();
    const on = !tracks.every((track) => track.enabled);
    tracks.forEach((track) => { track.enabled = on; });
    showToggle(button, label, on);
  }

  function showToggle(button, label, on) {
    button.setAttribute("aria-pressed", String(on));
    button.textContent = `${label} ${on ? "on" : "off"}`;
  }

  // For tests and support: the live objects, read-only.
  window.medeaseVisit = {
    get pc() { return state.pc; },
    get local() { return state.local; },
    get joined() { return state.joined; },
    get call() { return state.call; },
    get socketOpen() { return !!state.ws && state.ws.readyState === WebSocket.OPEN; },
  };

  $("join").addEventListener("click", join);
  $("leave").addEventListener("click", leave);
  $("camera").addEventListener("click", (e) => toggle("video", e.currentTarget, "Camera"));
  $("microphone").addEventListener("click", (e) => toggle("audio", e.currentTarget, "Microphone"));
  $("send").addEventListener("submit", sendMessage);
  window.addEventListener("pagehide", () => {
    // Closing the tab leaves the call, so the other side's waiting room is right.
    if (state.joined) {
      fetch(`/api/v1/consultations/${cfg.consultation}/call`, {
        method: "DELETE",
        credentials: "same-origin",
        keepalive: true,
        headers: { "X-CSRFToken": csrf },
      });
    }
  });

  (async () => {
    try {
      await loadHistory();
    } catch (error) {
      showChatError(`Could not load the chat: ${error.message}`);
    }
    try {
      const current = await api("GET", `consultations/${cfg.consultation}/call`);
      showCall(current.call);
    } catch (error) {
      showCall(null); // nobody joined yet (404)
    }
    openSocket();
  })();
})();
