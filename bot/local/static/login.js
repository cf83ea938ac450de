// Sign-in form of the LLM4Sweat console. The session cookie is set by the server (HttpOnly);
// this page only sends the name and password and moves on to the view the account may use.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const status = $("login-status");

  if (new URLSearchParams(location.search).get("link") === "invalid") $("login-link-status").hidden = false;

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "Signing in…";
    status.classList.remove("error");
    let response, data = {};
    try {
      response = await fetch("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: $("login-name").value.trim(), password: $("login-password").value }),
      });
      data = await response.json();
    } catch (e) {
      status.textContent = "The console server cannot be reached. Is llm4sweat still running?";
      status.classList.add("error");
      return;
    }
    if (!response.ok) {
      status.textContent = data.error || `Sign-in failed (HTTP ${response.status}).`;
      status.classList.add("error");
      $("login-password").value = "";
      $("login-password").focus();
      return;
    }
    location.assign(data.role === "moderator" ? "/#moderator" : "/#reviewer");
  });
})();
