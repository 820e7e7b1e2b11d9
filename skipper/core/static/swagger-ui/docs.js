// Skipper's API docs page: Swagger UI on this server's own openapi.json, nothing from elsewhere.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,            // never send the document to validator.swagger.io
    persistAuthorization: false,   // an API key stays in this tab's memory only
    tryItOutEnabled: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
